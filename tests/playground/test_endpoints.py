"""The playground's JSON endpoints: real numbers, strict validation, and no harm to serving."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from serve_helpers import API_KEY, http

from scratchllm.load import load_model


@pytest.fixture(scope="module")
def local(play_run):
    """The same run loaded here, to recompute what the server says."""
    return load_model(play_run)


def test_page_and_static_files_are_served_without_a_key(keyed_server):
    for path in ("/", "/playground/app.js", "/playground/style.css"):
        status, body = http("GET", keyed_server.url + path)
        assert status == 200 and len(body) > 1000, path
    assert http("GET", keyed_server.url + "/playground/../app.py")[0] == 404
    assert http("GET", keyed_server.url + "/playground/nope.js")[0] == 400
    assert http("GET", keyed_server.url + "/scratchllm/info")[0] == 401  # the data needs the key
    status, info = keyed_server.get("/scratchllm/info")
    assert status == 200 and info["auth"] and info["checkpoints"] == [20, 40, 60]


def test_attention_rows_are_distributions_over_the_past(play_server, local):
    text = "User: hello there\nAssistant:"
    status, d = play_server.post("/scratchllm/attention", {"text": text, "layer": 0})
    assert status == 200 and d["layer"] == 0 and d["n_head"] == 2
    import base64

    w = torch.frombuffer(bytearray(base64.b64decode(d["weights_u8"])), dtype=torch.uint8).float() / 255
    T = len(d["tokens"])
    w = w.view(2, T, T)
    assert torch.allclose(w.sum(-1), torch.ones(2, T), atol=T / 255)
    assert torch.all(w.triu(1) == 0)  # causal: nothing from the future
    from scratchllm.inspect import attention

    exact = torch.tensor(attention(local.model, local.tokenizer, text, layer=0)["weights"])
    assert (exact - w).abs().max() <= 0.5 / 255 + 1e-4  # the bytes are the library's numbers


def test_logit_lens_last_layer_is_the_models_prediction(play_server, local):
    text = "User: what is the river?\nAssistant: The river"
    status, d = play_server.post("/scratchllm/logit-lens", {"text": text, "top": 2})
    assert status == 200 and [r["layer"] for r in d["layers"]] == [0, 1, 2]
    ids = local.tokenizer.encode(text)
    with torch.no_grad():
        logits = local.model(torch.tensor([ids]))[0]
    assert [c[0]["id"] for c in d["layers"][-1]["top"]] == logits.argmax(-1).tolist()
    assert d["next_ids"] == ids[1:] + [None]


def test_sampling_pipeline_stages(play_server, local):
    text = "User: hello"
    post = lambda **kw: play_server.post("/scratchllm/sampling", {"text": text, **kw})[1]  # noqa: E731
    base = post(temperature=1.0)
    assert [s["name"] for s in base["stages"]] == ["model", "temperature 1", "top-k off", "top-p off"]
    assert base["stages"][0]["p"] == base["stages"][-1]["p"]
    hot, cold = post(temperature=2.0), post(temperature=0.3)
    assert hot["stages"][1]["p"][0] < base["stages"][1]["p"][0] < cold["stages"][1]["p"][0]
    k = post(temperature=1.0, top_k=3)
    assert k["stages"][2]["kept"] == 3 and sum(k["stages"][2]["p"][:3]) == pytest.approx(1, abs=1e-4)
    p = post(temperature=1.0, top_p=0.5)
    assert p["stages"][3]["kept"] < base["stages"][3]["kept"]
    greedy = post(temperature=0)
    assert greedy["sampled"]["id"] == greedy["candidates"][0]["id"]
    assert post(temperature=1.0, seed=7)["sampled"] == post(temperature=1.0, seed=7)["sampled"]


def test_tokenizer_embeddings_training_views(play_server):
    status, d = play_server.post("/scratchllm/tokenize", {"text": "User: hi"})
    assert status == 200 and d["kind"] == "char" and [t["text"] for t in d["tokens"]] == list("User: hi")
    assert d["merges"] is None
    status, emb = play_server.get("/scratchllm/embeddings")
    assert status == 200 and len(emb["xy"]) == len(emb["tokens"]) == emb["vocab_size"]
    status, early = play_server.get("/scratchllm/embeddings?step=20")
    assert status == 200 and early["xy"] != emb["xy"]
    status, nb = play_server.post("/scratchllm/neighbours", {"token_id": 5, "k": 4})
    assert status == 200 and len(nb["neighbours"]) == 4 and 5 not in [n["id"] for n in nb["neighbours"]]
    status, tr = play_server.get("/scratchllm/training")
    assert status == 200 and tr["run"] and tr["checkpoints"] == [20, 40, 60]
    assert [s for s, _ in tr["train"]][-1] == 60 and len(tr["val"]) >= 3
    status, c = play_server.post("/scratchllm/checkpoints/continue", {"prompt": "User: ", "max_tokens": 8})
    assert status == 200 and [x["step"] for x in c["continuations"]] == [20, 40, 60]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/scratchllm/attention", {"text": ""}),
        ("/scratchllm/attention", {"text": "x", "layer": 2}),
        ("/scratchllm/attention", {"text": "x", "layer": -1}),
        ("/scratchllm/attention", {"text": "x" * 8001}),
        ("/scratchllm/attention", {"text": "\u00e9"}),  # not in this char vocabulary
        ("/scratchllm/attention", {"text": 5}),
        ("/scratchllm/attention", {"text": "x", "bogus": 1}),
        ("/scratchllm/logit-lens", {"text": "x", "top": 11}),
        ("/scratchllm/logit-lens", {}),
        ("/scratchllm/sampling", {"text": "x", "temperature": -1}),
        ("/scratchllm/sampling", {"text": "x", "top_p": 0}),
        ("/scratchllm/sampling", {"text": "x", "top_k": "3"}),
        ("/scratchllm/sampling", {"text": "x", "temperature": float("nan")}),
        ("/scratchllm/tokenize", {"text": "\ud800"}),
        ("/scratchllm/neighbours", {"token_id": 10**6}),
        ("/scratchllm/neighbours", {"token_id": 1, "step": 21}),
        ("/scratchllm/checkpoints/continue", {"prompt": "x", "max_tokens": 65}),
        ("/scratchllm/checkpoints/continue", {"prompt": ""}),
    ],
)
def test_bad_input_is_a_400(play_server, path, body):
    raw = json.dumps(body).replace("NaN", "NaN").encode()
    status, out = http("POST", play_server.url + path, raw)
    assert status == 400, out
    assert isinstance(out["error"]["message"], str)


def test_bad_queries_and_json_are_4xx(play_server):
    for path in (
        "/scratchllm/embeddings?step=-1",
        "/scratchllm/embeddings?step=x",
        "/scratchllm/embeddings?step=21",
    ):
        assert http("GET", play_server.url + path)[0] == 400, path
    for raw in (b"", b"{", b"[]", b"\xff"):
        assert http("POST", play_server.url + "/scratchllm/attention", raw)[0] == 400


def test_inspection_beside_generation_changes_no_token(play_server):
    """Attention and lens passes fired while seeded requests decode: every request gets exactly
    the tokens it gets alone (the passes run between engine steps, never inside one)."""
    body = {"model": "run", "prompt": "User: tell me", "max_tokens": 40, "temperature": 1.0, "seed": 3}
    alone = play_server.post("/v1/completions", body)[1]["choices"][0]["text"]
    stop = threading.Event()
    errors: list[int] = []

    def poke() -> None:
        while not stop.is_set():
            for path in ("/scratchllm/attention", "/scratchllm/logit-lens", "/scratchllm/sampling"):
                status, _ = play_server.post(path, {"text": "User: hello there, the river"})
                if status != 200:
                    errors.append(status)

    pokers = [threading.Thread(target=poke) for _ in range(2)]
    for t in pokers:
        t.start()
    try:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(play_server.post("/v1/completions", body)[1]))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        for t in pokers:
            t.join()
    assert not errors
    assert [r["choices"][0]["text"] for r in results] == [alone] * 4


def test_api_key_is_used_by_the_endpoints(keyed_server):
    assert http("POST", keyed_server.url + "/scratchllm/attention", {"text": "hi"})[0] == 401
    assert http("POST", keyed_server.url + "/scratchllm/attention", {"text": "hi"}, key=API_KEY)[0] == 200
