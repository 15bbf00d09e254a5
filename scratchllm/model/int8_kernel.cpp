// scratchllm's matrix-vector kernels for decoding on a CPU:
//   linear_packed     y = (x @ q.T) * scale + bias   int8 weights (packed), fp32 math
//   linear_packed_q8  the same, x rounded to int8 in runs of 16 first: integer dot products
//   linear_rows_f32   y = x @ w.T + bias             fp32 weights, nn.Linear's own layout
//   decode_block      a whole pre-norm transformer block for one token (int8 weights)
//
// Why kernels of our own: decoding one token multiplies a single activation row by every weight
// matrix, so its speed is the speed of *reading the weights*. Int8 weights are 4x fewer bytes
// than fp32, but only if the kernel streams them from memory as fast as memory allows. The
// kernels PyTorch ships for this either sit on the deprecated quantized-tensor API, or (for
// weight-only int8 with one activation row) run at a small fraction of the memory bandwidth on
// the CPUs we measured (see docs/guide/benchmarks.md); its fp32 matrix-vector product reached
// ~55 % of the bandwidth.
//
// What linear_packed does (the other two share its threading, below):
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
//   * rows are split across threads with at::parallel_for (it honours torch.set_num_threads;
//     the extension must be compiled with -fopenmp, or the pragma inside it is ignored and
//     everything runs on one thread), and each thread reads four runs side by side
//     (parallel_streams below).
//
// Built at first use by scratchllm/model/quantize.py with torch.utils.cpp_extension, with the
// instruction-set flags this CPU reports (never -march=native); registered as
// torch.ops.scratchllm_int8.{linear_packed, linear_packed_q8, linear_rows_f32, decode_block}.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum8(__m256 v) {  // the sum of 8 fp32 lanes
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

constexpr int64_t kRows = 4;   // rows per block
constexpr int64_t kStep = 16;  // inputs per packed chunk of one row
constexpr int64_t kStreams = 4;  // blocks each thread reads side by side (see for_each_block)

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
// 8 int8 weights -> 8 fp32
inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
// G packed blocks (4 rows each) read side by side from G places in memory: see kStreams.
template <int G>
inline void dot_blocks(const float* x, const int8_t* const* p, int64_t K, float* out) {
  __m256 acc[G][kRows];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < kRows; ++j) acc[g][j] = _mm256_setzero_ps();
  for (int64_t k = 0, off = 0; k < K; k += kStep, off += kRows * kStep) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < kRows; ++j) {
        acc[g][j] = _mm256_fmadd_ps(x0, widen8(p[g] + off + kStep * j), acc[g][j]);
        acc[g][j] = _mm256_fmadd_ps(x1, widen8(p[g] + off + kStep * j + 8), acc[g][j]);
      }
  }
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < kRows; ++j) out[kRows * g + j] = hsum8(acc[g][j]);
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
#if defined(__AVX512F__) || !(defined(__AVX2__) && defined(__FMA__))
template <int G>
inline void dot_blocks(const float* x, const int8_t* const* p, int64_t K, float* out) {
  for (int g = 0; g < G; ++g) dot_block(x, p[g], K, out + kRows * g);
}
#endif

// The checks both ops share; returns the bias pointer (nullptr if none).
const float* check_args(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                        const std::optional<at::Tensor>& bias, int64_t n_out) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "scratchllm_int8.linear_packed: x must be a contiguous fp32 [M, K] tensor");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kChar && packed.is_contiguous(),
              "scratchllm_int8.linear_packed: packed must be a contiguous int8 [N/4, 4K] tensor");
  const int64_t K = x.size(1), blocks = packed.size(0);
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
  return B;
}

// Units (rows or packed blocks) 0 .. units-1 split over the threads: each thread takes a
// contiguous range and cuts it into kStreams parts that it walks side by side, calling
// body(G, u) with G unit indices u[0..G) that lie in G different places in memory. Why: one core
// streaming *one* sequential run of memory tops out well below what it can read from several
// at once (each run gets its own hardware prefetcher); on the 2-core AMD EPYC we measured, 4 runs
// read ~1.3-1.5x faster than 1. The leftover units of a range go one at a time (G = 1).
template <typename Body>
void parallel_streams(int64_t units, int64_t grain, const Body& body) {
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    const int64_t part = (end - begin) / kStreams;
    int64_t u[kStreams];
    for (int64_t i = 0; i < part; ++i) {
      for (int64_t g = 0; g < kStreams; ++g) u[g] = begin + g * part + i;
      body(std::integral_constant<int, kStreams>{}, u);
    }
    for (int64_t n = begin + kStreams * part; n < end; ++n) {
      u[0] = n;
      body(std::integral_constant<int, 1>{}, u);
    }
  });
}

// The loop both int8 ops share: y[m, n] = dot(row m of x, row n of the weights) * scale[n] +
// bias[n], where dot(G, m, p[G], out[4 G]) computes G packed blocks' 4 rows each for row m of x.
template <typename Dot>
at::Tensor for_each_block(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          const float* B, int64_t n_out, const Dot& dot) {
  const int64_t M = x.size(0), K = x.size(1), blocks = packed.size(0);
  at::Tensor y = at::empty({M, n_out}, x.options());
  const int8_t* P = packed.data_ptr<int8_t>();
  const float* S = scale.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  // A grain of 16 blocks (64 rows) keeps tiny layers on one thread, where waking others costs more.
  parallel_streams(blocks, 16, [&](auto G, const int64_t* u) {
    const int8_t* p[decltype(G)::value];
    float r[kRows * decltype(G)::value];
    for (int g = 0; g < G; ++g) p[g] = P + u[g] * kRows * K;
    for (int64_t m = 0; m < M; ++m) {  // the blocks stay in L1 while each row of x uses them
      dot(G, m, p, r);
      for (int g = 0; g < G; ++g)
        for (int64_t j = 0, n = u[g] * kRows; j < kRows && n + j < n_out; ++j)
          Y[m * n_out + n + j] = r[kRows * g + j] * S[n + j] + (B ? B[n + j] : 0.f);
    }
  });
  return y;
}

// x [M, K] fp32, packed [N_pad/4, 4*K] int8, scale [N] fp32, bias [N] fp32 or None -> [M, N] fp32
at::Tensor linear_packed(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                         const std::optional<at::Tensor>& bias, int64_t n_out) {
  const float* B = check_args(x, packed, scale, bias, n_out);
  const int64_t K = x.size(1);
  const float* X = x.data_ptr<float>();
  return for_each_block(x, packed, scale, B, n_out, [&](auto G, int64_t m, const int8_t* const* p, float* r) {
    dot_blocks<decltype(G)::value>(X + m * K, p, K, r);
  });
}

// ---------------------------------------------------------------------------------------------
// The "q8" variant: int8 activations too, so the inner loop is an integer dot product.
//
// Widening every int8 weight to fp32 (above) costs three instructions per 8 weights: on one core
// of the AVX2 machine we measured that, not memory, is the limit (8.5 GB/s of weights, against
// 11.7 for this kernel; with both cores busy both meet the memory limit). If the activations are
// rounded to int8 as well, the CPU's byte multiply-add (maddubs: 32 byte products summed in pairs
// into 16 int16 at once) does the work of 4 of those FMAs in one instruction.
//
// Rounding: each run of 16 consecutive inputs (one packed step) gets its own scale
// d = max|x| / 127 and is stored as round(x / d) in [-127, 127] -- the scheme of llama.cpp's q8_0
// (which uses runs of 32). Small runs keep the error small where a few inputs are large. The
// integer sum of one run is exact (int32); it is then scaled by d in fp32 and summed over runs,
// and the per-row weight scale is applied at the end, as in the fp32-math kernel.
//
// maddubs multiplies an *unsigned* byte by a signed one, so the usual trick is used: |x| times
// (w with the sign of x). With |x| <= 127 and |w| <= 127 a pair sums to at most 32258: no int16
// saturation.
// ---------------------------------------------------------------------------------------------

// One row of activations rounded in runs of 16: q [K] int8, d [K/16] fp32 scales.
inline void quantize_row(const float* x, int64_t K, int8_t* q, float* d) {
  for (int64_t k = 0; k < K; k += kStep) {
    float amax = 0.f;
    for (int64_t i = 0; i < kStep; ++i) amax = std::max(amax, std::fabs(x[k + i]));
    const float scale = amax / 127.f;
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int64_t i = 0; i < kStep; ++i) q[k + i] = static_cast<int8_t>(std::nearbyint(x[k + i] * inv));
    d[k / kStep] = scale;
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// Horizontal sum of the 4 fp32 lanes of each 128-bit half: -> (low half sum, high half sum)
inline void hsum_halves(__m256 v, float* lo, float* hi) {
  __m128 l = _mm256_castps256_ps128(v), h = _mm256_extractf128_ps(v, 1);
  l = _mm_hadd_ps(l, h);  // l0+l1, l2+l3, h0+h1, h2+h3
  l = _mm_hadd_ps(l, l);  // lo, hi, lo, hi
  *lo = _mm_cvtss_f32(l);
  *hi = _mm_cvtss_f32(_mm_shuffle_ps(l, l, 1));
}
// xq/xa: the row's int8 values and their absolute values, each run of 16 written twice (32
// bytes), so one 256-bit register lines up with the packed weights of two rows.
template <int G>
inline void dot_blocks_q8(const int8_t* xq, const uint8_t* xa, const float* d, const int8_t* const* p,
                          int64_t K, float* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 a01[G], a23[G];
  for (int g = 0; g < G; ++g) a01[g] = a23[g] = _mm256_setzero_ps();
  for (int64_t s = 0, off = 0; s < K / kStep; ++s, off += kRows * kStep) {
    const __m256i q = _mm256_loadu_si256((const __m256i*)(xq + 32 * s));
    const __m256i u = _mm256_loadu_si256((const __m256i*)(xa + 32 * s));
    const __m256 dx = _mm256_set1_ps(d[s]);
    for (int g = 0; g < G; ++g) {
      const __m256i w01 = _mm256_loadu_si256((const __m256i*)(p[g] + off));
      const __m256i w23 = _mm256_loadu_si256((const __m256i*)(p[g] + off + 32));
      const __m256i i01 = _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(w01, q)), ones);
      const __m256i i23 = _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(w23, q)), ones);
      a01[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i01), dx, a01[g]);
      a23[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i23), dx, a23[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    hsum_halves(a01[g], out + kRows * g, out + kRows * g + 1);
    hsum_halves(a23[g], out + kRows * g + 2, out + kRows * g + 3);
  }
}
#else
template <int G>
inline void dot_blocks_q8(const int8_t* xq, const uint8_t*, const float* d, const int8_t* const* p,
                          int64_t K, float* out) {
  for (int g = 0; g < G; ++g) {
    float r[kRows] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t s = 0; s < K / kStep; ++s)
      for (int64_t j = 0; j < kRows; ++j) {
        int32_t acc = 0;
        for (int64_t i = 0; i < kStep; ++i)
          acc += int32_t(xq[32 * s + i]) * int32_t(p[g][kRows * kStep * s + kStep * j + i]);
        r[j] += static_cast<float>(acc) * d[s];
      }
    for (int64_t j = 0; j < kRows; ++j) out[kRows * g + j] = r[j];
  }
}
#endif

// Same contract as linear_packed, but the rows of x are rounded to int8 (runs of 16) first.
at::Tensor linear_packed_q8(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias, int64_t n_out) {
  const float* B = check_args(x, packed, scale, bias, n_out);
  const int64_t M = x.size(0), K = x.size(1), runs = K / kStep;
  // Per row of x: the int8 values and their magnitudes, each run of 16 written twice; the scales.
  // (buffers kept per calling thread: decoding calls this ~50 times per token, and allocating
  // zeroed memory each time costs more than the rounding. The worker threads below get plain
  // pointers: inside the lambda a thread_local name would mean the *worker's* own copy.)
  static thread_local std::vector<int8_t> xq_buf, row_buf;
  static thread_local std::vector<uint8_t> xa_buf;
  static thread_local std::vector<float> xd_buf;
  xq_buf.resize(M * 2 * K);
  xa_buf.resize(M * 2 * K);
  xd_buf.resize(M * runs);
  row_buf.resize(K);
  int8_t* const xq = xq_buf.data();
  uint8_t* const xa = xa_buf.data();
  float* const xd = xd_buf.data();
  int8_t* const row = row_buf.data();
  const float* X = x.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    quantize_row(X + m * K, K, row, xd + m * runs);
    for (int64_t s = 0; s < runs; ++s)
      for (int64_t i = 0; i < kStep; ++i) {
        const int8_t v = row[s * kStep + i];
        const uint8_t a = static_cast<uint8_t>(v < 0 ? -v : v);
        int8_t* q = xq + m * 2 * K + 32 * s;
        uint8_t* u = xa + m * 2 * K + 32 * s;
        q[i] = q[i + kStep] = v;
        u[i] = u[i + kStep] = a;
      }
  }
  return for_each_block(x, packed, scale, B, n_out, [&](auto G, int64_t m, const int8_t* const* p, float* r) {
    dot_blocks_q8<decltype(G)::value>(xq + m * 2 * K, xa + m * 2 * K, xd + m * runs, p, K, r);
  });
}

// ---------------------------------------------------------------------------------------------
// fp32 decoding: y = x @ w.T + bias on nn.Linear's own row-major [N, K] weight, unchanged.
//
// PyTorch's matrix-vector product reads w at ~10-13 GB/s on the 2 cores we measured (~55 % of
// what they can read). This loop reads it at ~18-22 GB/s: every row is contiguous in memory, so
// taking rows in order is one sequential stream per thread, and parallel_streams makes it four.
// Same numbers as F.linear up to the order of the sum.
// ---------------------------------------------------------------------------------------------
template <int G>
inline void dot_rows(const float* x, const float* const* w, int64_t K, float* out) {
  int64_t k = 0;
  float tail[G];
  for (int g = 0; g < G; ++g) tail[g] = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 a[G], b[G];
  for (int g = 0; g < G; ++g) a[g] = b[g] = _mm256_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int g = 0; g < G; ++g) {
      a[g] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w[g] + k), a[g]);
      b[g] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(w[g] + k + 8), b[g]);
    }
  }
  for (int g = 0; g < G; ++g) tail[g] = hsum8(_mm256_add_ps(a[g], b[g]));
#endif
  for (; k < K; ++k)
    for (int g = 0; g < G; ++g) tail[g] += x[k] * w[g][k];
  for (int g = 0; g < G; ++g) out[g] = tail[g];
}

// x [M, K] fp32, w [N, K] fp32, bias [N] fp32 or None -> [M, N] fp32
at::Tensor linear_rows_f32(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "scratchllm_int8.linear_rows_f32: x must be a contiguous fp32 [M, K] tensor");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.size(1) == x.size(1),
              "scratchllm_int8.linear_rows_f32: w must be a contiguous fp32 [N, K] tensor");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const float* B = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N,
                "scratchllm_int8.linear_rows_f32: bias must be a contiguous fp32 [N] tensor");
    B = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({M, N}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  parallel_streams(N, 64, [&](auto G, const int64_t* u) {
    const float* p[decltype(G)::value];
    float r[decltype(G)::value];
    for (int g = 0; g < G; ++g) p[g] = W + u[g] * K;
    for (int64_t m = 0; m < M; ++m) {
      dot_rows<decltype(G)::value>(X + m * K, p, K, r);
      for (int g = 0; g < G; ++g) Y[m * N + u[g]] = r[g] + (B ? B[u[g]] : 0.f);
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// One transformer block for one decoding token, in one call: decode_block.
//
// With the weight products fast, a decoding token of GPT-2 small spent ~8 ms in them and ~5-7 ms
// around them: some 35 small PyTorch operators per block (norms, views, the KV-cache write,
// attention over the cache, the activation, two residual additions), each a trip through
// Python and the dispatcher, plus the module calls. For one token all of that is tiny
// arithmetic, so this function does the whole pre-norm block in C++ and calls the int8
// products above directly:
//
//   h = norm1(x); q, k, v = qkv(h); cache[pos] = k, v
//   x = x + proj(softmax(q . K[0..pos] / sqrt(D)) . V[0..pos])        (every head; GQA too)
//   x = x + fc2(act(fc1(norm2(x))))
//
// Same numbers as the module path up to the order of the sums (the tests compare them). It
// covers what decoding GPT-2-like models needs -- LayerNorm or RMSNorm, GELU (tanh or erf),
// ReLU, ReLU^2 or SwiGLU, multi-head or grouped-query attention, learned or no positions; the
// Python side (scratchllm/model/quantize.py, use_fused_decoding) sends everything else (RoPE,
// ALiBi, QK-norm, Mixture-of-Experts, post-norm, padding, batches) down the module path.
// ---------------------------------------------------------------------------------------------
enum Activation : int64_t { kGeluTanh = 0, kGeluErf = 1, kRelu = 2, kRelu2 = 3, kSwiglu = 4 };

// sum_i a[i] * b[i]: the query-key products of attention
inline float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float r = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  r = hsum8(_mm256_add_ps(s0, s1));
#endif
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// out[d] = sum_s w[s] * V[s * D + d] for d < D: the attention-weighted sum of the values
inline void weighted_rows(const float* w, const float* V, int64_t S, int64_t D, float* out) {
  int64_t d = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; d + 32 <= D; d += 32) {  // four independent accumulators: no wait on the previous add
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      const __m256 ws = _mm256_set1_ps(w[s]);
      const float* v = V + s * D + d;
      a0 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v), a0);
      a1 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 8), a1);
      a2 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 16), a2);
      a3 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 24), a3);
    }
    _mm256_storeu_ps(out + d, a0);
    _mm256_storeu_ps(out + d + 8, a1);
    _mm256_storeu_ps(out + d + 16, a2);
    _mm256_storeu_ps(out + d + 24, a3);
  }
  for (; d + 8 <= D; d += 8) {
    __m256 a0 = _mm256_setzero_ps();
    for (int64_t s = 0; s < S; ++s) a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[s]), _mm256_loadu_ps(V + s * D + d), a0);
    _mm256_storeu_ps(out + d, a0);
  }
#endif
  for (; d < D; ++d) {
    float acc = 0.f;
    for (int64_t s = 0; s < S; ++s) acc += w[s] * V[s * D + d];
    out[d] = acc;
  }
}

const float* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr;
}

// LayerNorm (rms = false: centre, then scale) or RMSNorm (rms = true: scale only) of one row.
void norm_row(const float* x, int64_t C, const float* w, const float* b, double eps, bool rms, float* out) {
  double mean = 0.0, var = 0.0;
  if (!rms) {
    for (int64_t c = 0; c < C; ++c) mean += x[c];
    mean /= C;
  }
  for (int64_t c = 0; c < C; ++c) var += (x[c] - mean) * (x[c] - mean);
  const float inv = static_cast<float>(1.0 / std::sqrt(var / C + eps));
  const float m = static_cast<float>(mean);
  for (int64_t c = 0; c < C; ++c) out[c] = (x[c] - m) * inv * w[c] + (b ? b[c] : 0.f);
}

at::Tensor int8_product(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                        const std::optional<at::Tensor>& bias, bool q8) {
  const int64_t n_out = scale.numel();
  return q8 ? linear_packed_q8(x, packed, scale, bias, n_out) : linear_packed(x, packed, scale, bias, n_out);
}

at::Tensor decode_block(const at::Tensor& x, const at::Tensor& norm1_w, const std::optional<at::Tensor>& norm1_b,
                        const at::Tensor& qkv_p, const at::Tensor& qkv_s, const std::optional<at::Tensor>& qkv_b,
                        const at::Tensor& proj_p, const at::Tensor& proj_s, const std::optional<at::Tensor>& proj_b,
                        const at::Tensor& norm2_w, const std::optional<at::Tensor>& norm2_b,
                        const at::Tensor& fc_p, const at::Tensor& fc_s, const std::optional<at::Tensor>& fc_b,
                        const at::Tensor& fc2_p, const at::Tensor& fc2_s, const std::optional<at::Tensor>& fc2_b,
                        const at::Tensor& k_cache, const at::Tensor& v_cache, int64_t layer, int64_t pos,
                        int64_t n_head, double eps, bool rms, int64_t activation, bool q8) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "scratchllm_int8.decode_block: x must be contiguous fp32");
  const int64_t C = x.numel();
  // the whole cache of the model, [n_layer, 1, n_kv_head, max_len, head_dim]: this block's slice
  // is found here, not by two indexing operators per cache in Python
  TORCH_CHECK(k_cache.dim() == 5 && k_cache.size(1) == 1 && k_cache.scalar_type() == at::kFloat &&
                  k_cache.is_contiguous() && v_cache.sizes() == k_cache.sizes() &&
                  v_cache.scalar_type() == at::kFloat && v_cache.is_contiguous() && layer >= 0 &&
                  layer < k_cache.size(0),
              "scratchllm_int8.decode_block: the caches must be contiguous fp32 [n_layer, 1, n_kv_head, "
              "max_len, head_dim] and layer one of them");
  const int64_t Hkv = k_cache.size(2), L = k_cache.size(3), D = k_cache.size(4), H = n_head;
  TORCH_CHECK(H * D == C && H % Hkv == 0 && pos >= 0 && pos < L,
              "scratchllm_int8.decode_block: heads, head width, cache and position do not fit together");
  TORCH_CHECK(norm1_w.numel() == C && norm2_w.numel() == C && qkv_s.numel() == (H + 2 * Hkv) * D &&
                  proj_s.numel() == C && fc2_s.numel() == C,
              "scratchllm_int8.decode_block: weight shapes do not match the block");
  const float* X = x.data_ptr<float>();
  at::Tensor out = at::empty({1, C}, x.options());
  float* Y = out.data_ptr<float>();

  // attention: norm, q/k/v, cache write, one query against positions 0..pos, projection
  at::Tensor h = at::empty({1, C}, x.options());
  norm_row(X, C, norm1_w.data_ptr<float>(), opt_ptr(norm1_b), eps, rms, h.data_ptr<float>());
  at::Tensor qkv = int8_product(h, qkv_p, qkv_s, qkv_b, q8);
  const float* Q = qkv.data_ptr<float>();
  const float* Kn = Q + H * D;
  const float* Vn = Kn + Hkv * D;
  float* KC = k_cache.data_ptr<float>() + layer * Hkv * L * D;
  float* VC = v_cache.data_ptr<float>() + layer * Hkv * L * D;
  for (int64_t j = 0; j < Hkv; ++j) {
    std::copy(Kn + j * D, Kn + (j + 1) * D, KC + (j * L + pos) * D);
    std::copy(Vn + j * D, Vn + (j + 1) * D, VC + (j * L + pos) * D);
  }
  const int64_t S = pos + 1, group = H / Hkv;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  at::Tensor att = at::empty({1, C}, x.options());
  float* A = att.data_ptr<float>();
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> p(S);
    for (int64_t hd = h0; hd < h1; ++hd) {
      const float* q = Q + hd * D;
      const float* K = KC + (hd / group) * L * D;
      const float* V = VC + (hd / group) * L * D;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < S; ++s) {
        p[s] = dot_f32(q, K + s * D, D) * scale;
        mx = std::max(mx, p[s]);
      }
      float sum = 0.f;
      for (int64_t s = 0; s < S; ++s) sum += (p[s] = std::exp(p[s] - mx));
      const float inv = 1.f / sum;
      for (int64_t s = 0; s < S; ++s) p[s] *= inv;
      weighted_rows(p.data(), V, S, D, A + hd * D);
    }
  });
  at::Tensor y = int8_product(att, proj_p, proj_s, proj_b, q8);
  const float* P = y.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) Y[c] = X[c] + P[c];

  // feed-forward: norm, fc, activation, fc2
  norm_row(Y, C, norm2_w.data_ptr<float>(), opt_ptr(norm2_b), eps, rms, h.data_ptr<float>());
  at::Tensor f = int8_product(h, fc_p, fc_s, fc_b, q8);
  float* F = f.data_ptr<float>();
  int64_t hidden = f.numel();
  TORCH_CHECK(activation >= kGeluTanh && activation <= kSwiglu, "scratchllm_int8.decode_block: unknown activation ",
              activation);
  if (activation == kSwiglu) hidden /= 2;  // gate rows first, then up rows: silu(gate) * up
  // (on every thread: a tanh or erf costs ~20 ns, and GPT-2 small has 3,072 of them per block)
  at::parallel_for(0, hidden, 512, [&](int64_t i0, int64_t i1) {
    constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
    constexpr float kInvSqrt2 = 0.7071067811865476f;
    for (int64_t i = i0; i < i1; ++i) {
      const float v = F[i];
      switch (activation) {
        case kGeluTanh: F[i] = 0.5f * v * (1.f + std::tanh(kBeta * (v + 0.044715f * v * v * v))); break;
        case kGeluErf: F[i] = 0.5f * v * (1.f + std::erf(v * kInvSqrt2)); break;
        case kRelu: F[i] = v > 0.f ? v : 0.f; break;
        case kRelu2: F[i] = v > 0.f ? v * v : 0.f; break;
        default: F[i] = v / (1.f + std::exp(-v)) * F[hidden + i];  // kSwiglu
      }
    }
  });
  at::Tensor g = int8_product(hidden == f.numel() ? f : f.narrow(1, 0, hidden).contiguous(), fc2_p, fc2_s, fc2_b, q8);
  const float* G = g.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) Y[c] += G[c];
  return out.view(x.sizes());
}

}  // namespace

TORCH_LIBRARY(scratchllm_int8, m) {
  m.def("linear_packed(Tensor x, Tensor packed, Tensor scale, Tensor? bias, int n_out) -> Tensor");
  m.def("linear_packed_q8(Tensor x, Tensor packed, Tensor scale, Tensor? bias, int n_out) -> Tensor");
  m.def("linear_rows_f32(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def(
      "decode_block(Tensor x, Tensor norm1_w, Tensor? norm1_b, Tensor qkv_p, Tensor qkv_s, Tensor? qkv_b, "
      "Tensor proj_p, Tensor proj_s, Tensor? proj_b, Tensor norm2_w, Tensor? norm2_b, Tensor fc_p, Tensor fc_s, "
      "Tensor? fc_b, Tensor fc2_p, Tensor fc2_s, Tensor? fc2_b, Tensor(a!) k_cache, Tensor(b!) v_cache, int layer, "
      "int pos, int n_head, float eps, bool rms, int activation, bool q8) -> Tensor");
}

TORCH_LIBRARY_IMPL(scratchllm_int8, CPU, m) {
  m.impl("linear_packed", &linear_packed);
  m.impl("linear_packed_q8", &linear_packed_q8);
  m.impl("linear_rows_f32", &linear_rows_f32);
  m.impl("decode_block", &decode_block);
}
