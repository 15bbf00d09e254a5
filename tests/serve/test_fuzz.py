"""Hostile and malformed requests: never a 5xx, and the server still answers afterwards.

Two sources, > 500 requests in all: schemathesis generating requests from the app's own
``/openapi.json`` (valid ones and deliberately invalid ones, derandomized so the suite stays
deterministic), and a hand-written list of what breaks servers — broken JSON, wrong types,
invalid UTF-8, lone surrogates, NaN, deep nesting, huge numbers, a 10 MB body, prompts longer
than the context.
"""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlparse

import pytest
from serve_helpers import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def raw_request(url: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 400 and resp.getheader("content-type", "").startswith("application/json"):
            err = json.loads(data)["error"]  # OpenAI-shaped, always
            assert isinstance(err["message"], str) and isinstance(err["type"], str), err
        return resp.status
    finally:
        conn.close()


def hostile_cases() -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    J = {"Content-Type": "application/json", **AUTH}
    chat, comp = "/v1/chat/completions", "/v1/completions"
    msg = [{"role": "user", "content": "hello"}]
    cases: list[tuple[str, str, bytes | None, dict[str, str]]] = []

    def add(path: str, body: object, headers: dict[str, str] = J, method: str = "POST") -> None:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        cases.append((method, path, data, headers))

    for path in (chat, comp, "/tokenize", "/detokenize"):
        for raw in (
            b"",
            b"{",
            b"{}",
            b"[]",
            b"null",
            b"42",
            b'"x"',
            b"{bad json}",
            b'{"model": }',
            b"\xff\xfe\xfd",
            b'{"model": "chatty", "prompt": "\xff\xfe"}',
            b"{" * 5000 + b"}" * 5000,
            b"[" * 100000,
            b'{"model": NaN}',
            b'{"model": "chatty", "temperature": Infinity}',
            b"\x00" * 100,
        ):
            add(path, raw)
        add(path, {"model": "chatty"}, {"Content-Type": "text/plain", **AUTH})
        add(path, {"model": "chatty"}, {})  # no key
    bad_values = {
        "temperature": [-1, 3, "1", None, [], {}, 1e308, -0.0001, True],
        "top_p": [-0.1, 1.1, "x", [0.5]],
        "top_k": [-5, 10**12, 1.5, "3"],
        "n": [0, 17, 1.5, -1, 10**20, "2"],
        "max_tokens": [-1, 10**30, 1.5, "10", 2**63],
        "stop": [["a"] * 5, 5, [1, 2], {"a": 1}, ["\ud800"]],
        "seed": [1.5, "7", 2**70, -(2**70)],
        "presence_penalty": [3, -3, "0"],
        "frequency_penalty": [2.5, [], None],
        "logit_bias": [
            {"1": 1000},
            {"-1": 1},
            {"abc": 1},
            [1, 2],
            {"1": "x"},
            {str(i): 1 for i in range(1000)},
            {"99999999999": 1},
        ],
        "stream": ["yes", 1, None],
        "stream_options": [{"include_usage": True}, {"include_usage": "x"}, [], {"bogus": 1}],
        "logprobs": [2, "true", 99, -1],
        "top_logprobs": [21, -1, "5"],
        "model": [None, 5, "", "x" * 10000, "\ud800"],
        "user": [5, ["x"]],
        "extra_body": [{"top_k": "x"}, {"nope": 1}, 5],
        "tools": [[{"type": "function", "function": {"name": "f"}}]],
        "response_format": [{"type": "json_object"}],
        "unknown_field": [1],
    }
    for field, values in bad_values.items():
        for v in values:
            add(chat, {"model": "chatty", "messages": msg, field: v})
            if field != "stream":  # the same mistakes in a streamed request
                add(chat, {"model": "chatty", "messages": msg, "stream": True, field: v})
            if field not in ("top_logprobs", "tools", "response_format"):
                add(comp, {"model": "chatty", "prompt": "hi", field: v})
    for messages in (
        [],
        [{}],
        [{"role": "user"}],
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": "x" * 5000}],
        [{"role": "assistant", "content": "only me"}],
        [{"role": "user", "content": "\ud83d"}],
        [{"role": "user", "content": "é ü 🍕"}],
        [{"role": "system", "content": "x"}],
        "hello",
        [{"role": "user", "content": "<|endoftext|>" * 5}],
        [{"role": "assistant", "tool_calls": [{"id": "1"}]}, {"role": "user", "content": "x"}],
    ):
        add(chat, {"model": "chatty", "messages": messages})
    for prompt in (
        "x" * 129,
        "x" * 100000,
        [],
        [[]],
        [-1],
        [10**9],
        [[1, 2], "x"],
        ["ok"] * 500,
        [1.5],
        "",
        "\u00e9\u00e8",
        "🍕",
        None,
        {"a": 1},
        [[1] * 200],
    ):
        add(comp, {"model": "chatty", "prompt": prompt})
    add(comp, {"model": "chatty", "prompt": "hi", "max_tokens": 0})
    add(comp, {"model": "chatty", "prompt": "hi", "echo": True, "logprobs": 5, "max_tokens": 0})
    add(comp, {"model": "chatty", "prompt": "x" * 128, "echo": True, "logprobs": 0, "max_tokens": 0})
    add(comp, {"model": "chatty", "prompt": "hi", "suffix": "there"})
    add(comp, {"model": "chatty", "prompt": "hi", "best_of": 3})
    add("/tokenize", {"prompt": "x", "messages": msg})
    add("/tokenize", {"prompt": "é"})
    add("/detokenize", {"tokens": [10**9]})
    add("/detokenize", {"tokens": [-1]})
    add("/detokenize", {"tokens": "abc"})
    big = b'{"model": "chatty", "prompt": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    add(comp, big)  # 10 MB
    for method, path in (
        ("GET", chat),
        ("PUT", comp),
        ("DELETE", "/v1/models"),
        ("GET", "/nope"),
        ("POST", "/v1/models"),
        ("GET", "/v1/models/other"),
        ("PATCH", "/tokenize"),
        ("GET", "/v1/../../etc/passwd"),
        ("GET", "/v1/models/%00"),
    ):
        add(path, None, AUTH, method)
    return cases


def test_hand_written_hostile_requests_never_5xx(main_server):
    cases = hostile_cases()
    assert len(cases) >= 300
    statuses = [raw_request(main_server.url, m, p, b, h) for m, p, b, h in cases]
    server_errors = [(c[0], c[1], (c[2] or b"")[:80], s) for c, s in zip(cases, statuses) if s >= 500]
    assert not server_errors
    assert statuses.count(413) == 1  # the 10 MB body
    assert all(
        400 <= s < 500 for s, c in zip(statuses, cases) if c[3] is not AUTH and "Authorization" not in c[3]
    )
    # a slowloris-ish half request, then a client that hangs up mid-body: the server shrugs
    u = urlparse(main_server.url)
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model":')
    assert main_server.get("/health") == (200, {"status": "ok"})
    status, out = main_server.post("/v1/completions", {"model": "chatty", "prompt": "The", "max_tokens": 3})
    assert status == 200 and out["usage"]["completion_tokens"] == 3


def test_schemathesis_over_openapi_never_5xx(main_server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(main_server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/tokenize"}
    seen: list[tuple[str, int]] = []

    def fuzz(op, mode) -> None:
        @settings(
            max_examples=3 if op.method.upper() == "GET" else 25,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(mode, headers=AUTH))
        def check(case) -> None:
            if mode == schemathesis.GenerationMode.POSITIVE and isinstance(case.body, dict):
                # The schema cannot know which models a server holds (any string is a valid
                # name, and an unknown one is a correct 404): valid requests name the served one.
                case.body["model"] = "chatty"
            response = case.call(base_url=main_server.url, headers=AUTH, timeout=60)
            seen.append((op.path, response.status_code))
            assert response.status_code < 500, (case.body, response.text[:500])

        try:
            check()
        except Unsatisfiable:  # nothing invalid to say to an operation without inputs
            assert mode == schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET"

    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(op, mode)
    assert len(seen) >= 200  # with the hand-written ones: > 500 requests
    assert any(s == 200 for p, s in seen if p == "/v1/chat/completions")  # valid ones ran too
    assert any(400 <= s < 500 for p, s in seen if p == "/v1/completions")
    assert main_server.get("/health") == (200, {"status": "ok"})
