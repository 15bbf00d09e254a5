"""Limits: a full queue answers 429, a client that leaves frees its slot, requests time out, and
``/health`` tells loading from ready. The model here is slow on purpose (random weights, a long
context), so a request can be caught while it runs."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlparse

import openai
import pytest
import torch
from serve_helpers import (
    API_KEY,
    Server,
    ascii_tokenizer,
    start_process,
    start_thread_server,
    stop_process,
    wait_healthy,
)

from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files

LONG = {"model": "slow", "prompt": "a", "max_tokens": 1500, "temperature": 0}


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    tok = ascii_tokenizer()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=1536, n_layer=4, n_head=4, n_embd=128)
    out = tmp_path_factory.mktemp("serve") / "slow"
    save_run_files(out, GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)
    LONG["logit_bias"] = {str(tok.eot_id): -100}  # never stops early
    return out


@pytest.fixture(scope="module")
def one_slot_server(slow_run):
    proc, url, lines = start_process(slow_run, "--max-batch", "1", "--max-queue", "1", "--api-key", API_KEY)
    wait_healthy(url, proc)
    yield Server(url, lambda: stop_process(proc), lambda: "".join(lines))
    stop_process(proc)


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Start a streamed request and read until its first generated text arrives."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), headers)
    resp = conn.getresponse()
    assert resp.status == 200
    while True:
        line = resp.fp.readline().decode()
        if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
            return conn, resp


def test_queue_full_429_then_disconnect_frees_the_slot(one_slot_server):
    s = one_slot_server
    conn, resp = open_stream(s.url, LONG)  # holds the only slot
    assert s.metric("scratchllm_requests_running") == 1
    waiting: dict = {}
    t = threading.Thread(
        target=lambda: waiting.update(
            r=s.post("/v1/completions", {**LONG, "max_tokens": 5}), t=time.monotonic()
        )
    )
    t.start()
    s.wait_metric("scratchllm_requests_waiting", 1, within=10)
    status, body = s.post("/v1/completions", {**LONG, "max_tokens": 5})
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    client = openai.OpenAI(base_url=s.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(**{**LONG, "max_tokens": 5})
    assert info.value.response.headers["retry-after"] == "1"
    # the streaming client goes away: its slot goes to the waiting request at once
    gone = time.monotonic()
    resp.close()
    conn.close()
    t.join(30)
    assert waiting["r"][0] == 200 and waiting["r"][1]["usage"]["completion_tokens"] == 5
    assert waiting["t"] - gone < 1.0
    s.wait_metric("scratchllm_requests_running", 0, within=1.0)
    assert s.metric("scratchllm_slots_in_use") == 0


def test_non_streamed_disconnect_frees_the_slot(one_slot_server):
    s = one_slot_server
    u = urlparse(s.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps(LONG),
        {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    s.wait_metric("scratchllm_requests_running", 1, within=10)
    time.sleep(0.3)  # it is generating now
    conn.close()
    assert s.wait_metric("scratchllm_requests_running", 0, within=1.0) < 1.0
    assert s.metric("scratchllm_slots_in_use") == 0
    _, text = s.get("/metrics")
    assert 'scratchllm_requests_total{outcome="cancelled"}' in text


def test_timeout_408_and_mid_stream_error(slow_run):
    from scratchllm.serve.app import ServeSettings

    s = start_thread_server(
        slow_run, settings=ServeSettings(model_name="slow", request_timeout=0.5), max_batch=2
    )
    try:
        t0 = time.monotonic()
        status, body = s.post("/v1/completions", LONG)
        assert status == 408 and body["error"]["code"] == "request_timeout" and time.monotonic() - t0 < 10
        status, raw = s.post("/v1/completions", {**LONG, "stream": True})
        assert status == 200  # the stream had started: the error arrives as an event
        events = [e[6:] for e in raw.split("\n\n") if e]
        assert json.loads(events[-2])["error"]["code"] == "request_timeout" and events[-1] == "[DONE]"
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIError):
            list(client.completions.create(**LONG, stream=True))
        assert s.get("/health") == (200, {"status": "ok"})
    finally:
        s.stop()


def test_health_is_503_while_loading(char_run):
    from scratchllm.load import load_model

    gate = threading.Event()

    def slow_load():
        gate.wait(30)
        return load_model(char_run)

    s = start_thread_server(char_run, load=slow_load, wait=False)
    try:
        assert s.get("/health") == (503, {"status": "loading"})
        status, body = s.get("/v1/models")
        assert status == 503 and body["error"]["code"] == "model_not_ready"
        assert s.post("/v1/completions", {"model": "chatty", "prompt": "a"})[0] == 503
        gate.set()
        wait_healthy(s.url, timeout=30)
        assert s.get("/v1/models")[0] == 200
    finally:
        s.stop()


def test_cli_refuses_other_models_and_bad_flags(tmp_path, char_run):
    import subprocess
    import sys

    from scratchllm.model.bert import BertConfig, BertModel

    tok = ascii_tokenizer()
    cfg = BertConfig(vocab_size=tok.vocab_size + 4, context_length=16, n_layer=1, n_head=2, n_embd=16)
    save_run_files(tmp_path / "bert", BertModel(cfg), arch="bert", model_config=cfg, tokenizer=tok)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "scratchllm", "serve", *args], capture_output=True, text=True, timeout=120
        )

    r = cli("--model", str(tmp_path / "bert"), "--port", "0")
    assert r.returncode == 2 and "is a bert model" in r.stderr and "scratchllm fill-mask" in r.stderr
    assert "Traceback" not in r.stderr
    for args, msg in [
        (["--model", str(tmp_path / "nope")], "model not found"),
        (["--model", str(char_run), "--max-batch", "0"], "--max-batch must be >= 1"),
        (["--model", str(char_run), "--port", "70000"], "--port"),
    ]:
        r = cli(*args)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
