// scratchllm's int8 matrix-vector kernel: y = (x @ q.T) * scale + bias, int8 weights, fp32 math.
//
// Why a kernel of our own: decoding one token multiplies a single activation row by every weight
// matrix, so its speed is the speed of *reading the weights*. Int8 weights are 4x fewer bytes
// than fp32, but only if the kernel streams them from memory as fast as memory allows. The
// kernels PyTorch ships for this either sit on the deprecated quantized-tensor API, or (for
// weight-only int8 with one activation row) run at a small fraction of the memory bandwidth on
// the CPUs we measured (see docs/guide/benchmarks.md).
//
// What it does:
//   * the weights are stored "packed": rows are taken four at a time and, for every 16
//     consecutive inputs k, the 16 int8 weights of each of the 4 rows lie next to each other:
//     [N/4][K/16][4][16]. One 64-byte cache line then holds everything the inner loop needs for
//     one step, and the whole matrix is read front to back in one stream, which is what a CPU's
//     hardware prefetcher is best at.
//   * the inner loop widens 8 (AVX2) or 16 (AVX-512) int8 weights to fp32 and multiplies them
//     with the fp32 activations (fused multiply-add), keeping 4 rows' sums in registers. Only the
//     weights are int8 ("weight-only" quantization): activations keep full precision, so the result
//     equals the fp32 product with the dequantized weights up to summation order.
//   * the per-row scale (and bias) is applied once per output, after the sum.
//   * rows are split across threads with at::parallel_for (it honours torch.set_num_threads).
//
// Built at first use by scratchllm/model/quantize.py with torch.utils.cpp_extension, with the
// instruction-set flags this CPU reports (never -march=native); registered as
// torch.ops.scratchllm_int8.linear_packed.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kRows = 4;   // rows per block
constexpr int64_t kStep = 16;  // inputs per packed chunk of one row

// sum_k x[k] * block_row_j[k] for the 4 rows of one packed block -> out[0..3]
#if defined(__AVX512F__)
inline void dot_block(const float* x, const int8_t* p, int64_t K, float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kStep, p += kRows * kStep) {
    const __m512 xv = _mm512_loadu_ps(x + k);
    // int8 -> int32 -> fp32, 16 lanes at a time, then multiply-add.
    a0 = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p)))), a0);
    a1 = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 16)))), a1);
    a2 = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 32)))), a2);
    a3 = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 48)))), a3);
  }
  out[0] = _mm512_reduce_add_ps(a0);
  out[1] = _mm512_reduce_add_ps(a1);
  out[2] = _mm512_reduce_add_ps(a2);
  out[3] = _mm512_reduce_add_ps(a3);
}
#elif defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// 8 int8 weights -> 8 fp32
inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
inline void dot_block(const float* x, const int8_t* p, int64_t K, float* out) {
  // Two accumulators per row (low and high 8 of each 16) keep 8 independent FMA chains in flight.
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += kStep, p += kRows * kStep) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    a0 = _mm256_fmadd_ps(x0, widen8(p), a0);
    b0 = _mm256_fmadd_ps(x1, widen8(p + 8), b0);
    a1 = _mm256_fmadd_ps(x0, widen8(p + 16), a1);
    b1 = _mm256_fmadd_ps(x1, widen8(p + 24), b1);
    a2 = _mm256_fmadd_ps(x0, widen8(p + 32), a2);
    b2 = _mm256_fmadd_ps(x1, widen8(p + 40), b2);
    a3 = _mm256_fmadd_ps(x0, widen8(p + 48), a3);
    b3 = _mm256_fmadd_ps(x1, widen8(p + 56), b3);
  }
  out[0] = hsum(_mm256_add_ps(a0, b0));
  out[1] = hsum(_mm256_add_ps(a1, b1));
  out[2] = hsum(_mm256_add_ps(a2, b2));
  out[3] = hsum(_mm256_add_ps(a3, b3));
}
#else
// Portable C++ (the compiler may still vectorise it).
inline void dot_block(const float* x, const int8_t* p, int64_t K, float* out) {
  float r[kRows] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t k = 0; k < K; k += kStep, p += kRows * kStep)
    for (int64_t j = 0; j < kRows; ++j)
      for (int64_t i = 0; i < kStep; ++i) r[j] += x[k + i] * static_cast<float>(p[kStep * j + i]);
  for (int64_t j = 0; j < kRows; ++j) out[j] = r[j];
}
#endif

// x [M, K] fp32, packed [N_pad/4, 4*K] int8, scale [N] fp32, bias [N] fp32 or None -> [M, N] fp32
at::Tensor linear_packed(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                         const std::optional<at::Tensor>& bias, int64_t n_out) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "scratchllm_int8.linear_packed: x must be a contiguous fp32 [M, K] tensor");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kChar && packed.is_contiguous(),
              "scratchllm_int8.linear_packed: packed must be a contiguous int8 [N/4, 4K] tensor");
  const int64_t M = x.size(0), K = x.size(1), blocks = packed.size(0);
  TORCH_CHECK(K % kStep == 0 && packed.size(1) == kRows * K && blocks * kRows >= n_out && n_out > 0,
              "scratchllm_int8.linear_packed: packed shape does not match x (K must be a multiple of 16)");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == n_out,
              "scratchllm_int8.linear_packed: scale must be a contiguous fp32 [N] tensor");
  const float* B = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n_out,
                "scratchllm_int8.linear_packed: bias must be a contiguous fp32 [N] tensor");
    B = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({M, n_out}, x.options());
  const float* X = x.data_ptr<float>();
  const int8_t* P = packed.data_ptr<int8_t>();
  const float* S = scale.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  // A grain of 16 blocks (64 rows) keeps tiny layers on one thread, where waking others costs more.
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    float r[kRows];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n = blk * kRows;
      const int8_t* p = P + blk * kRows * K;
      for (int64_t m = 0; m < M; ++m) {  // the block stays in L1 while each row of x uses it
        dot_block(X + m * K, p, K, r);
        for (int64_t j = 0; j < kRows && n + j < n_out; ++j)
          Y[m * n_out + n + j] = r[j] * S[n + j] + (B ? B[n + j] : 0.f);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(scratchllm_int8, m) {
  m.def("linear_packed(Tensor x, Tensor packed, Tensor scale, Tensor? bias, int n_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(scratchllm_int8, CPU, m) { m.impl("linear_packed", &linear_packed); }
