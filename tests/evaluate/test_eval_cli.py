"""``scratchllm eval`` end to end for every architecture, the comparison table, robustness, errors.

Where a training command already scored the same rows (``test_metrics.json``, the last eval event
of ``metrics.jsonl``), ``eval`` must give exactly the same numbers: same split, same masking,
same decoding.
"""

from __future__ import annotations

import json
import math

import pytest
from eval_helpers import cli, ok


def _last_eval(run):
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "eval"][-1]


def _test_metrics(run):
    return json.loads((run / "test_metrics.json").read_text())["test"]


def test_gpt_on_shards_and_on_text(ws):
    a = ok("eval", "--model", ws.base, "--data", ws.shards, "--json").json()
    assert a["task"] == "lm" and a["split"] == "val" and a["architecture"] == "gpt"
    assert a["perplexity"] == pytest.approx(math.exp(a["val_loss"]), rel=1e-6)
    for key in ("tokens_per_s", "peak_rss_mb", "tokens", "windows", "batches"):
        assert key in a
    b = ok("eval", "--model", ws.base, "--data", ws.text, "--json").json()
    assert b["split"] == "all" and b["tokens"] > 0 and "unknown_chars_dropped" not in b
    text = ok("eval", "--model", ws.base, "--data", ws.text).out
    assert "perplexity" in text and "tokens/s" in text


@pytest.mark.parametrize("run", ["cls", "lora", "bert_cls"])
def test_classifier_eval_reproduces_its_test_split(ws, run):
    """A fine-tuned run (GPT head, LoRA, BERT head) on its own file: exactly test_metrics.json."""
    path = getattr(ws, run)
    got = ok("eval", "--model", path, "--data", ws.csv, "--json").json()
    want = _test_metrics(path)
    assert got["split"] == "test" and got["task"] == "classify"
    assert got["method"] == "classification head" + (" + LoRA" if run == "lora" else "")
    for key in ("accuracy", "precision", "recall", "f1", "loss"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["confusion_matrix"] == want["confusion_matrix"] and got["n"] == want["n"]
    whole = ok("eval", "--model", path, "--data", ws.csv, "--split", "all", "--json").json()
    assert whole["n"] == 40


def test_instruction_run_reproduces_its_test_scores(ws):
    got = ok("eval", "--model", ws.instruct, "--data", ws.inst, "--max-new-tokens", "8", "--json").json()
    want = _test_metrics(ws.instruct)
    assert got["task"] == "instruct" and got["split"] == "test"
    for key in ("response_loss", "perplexity", "exact_match", "rouge_l", "n"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    replies = json.loads((ws.instruct / "test_responses.json").read_text())
    assert [r["model_response"] for r in got["responses"]] == [r["model_response"] for r in replies]


def test_bert_eval_reproduces_training_evaluation(ws):
    """Same held-out documents, same seeded masking: the numbers of training's last evaluation."""
    got = ok("eval", "--model", ws.bert, "--data", ws.text, "--json").json()
    want = _last_eval(ws.bert)
    assert got["task"] == "mlm" and got["split"] == "val"
    for key in ("val_loss", "perplexity", "masked_token_accuracy", "nsp_accuracy"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    shards = ok("eval", "--model", ws.bert, "--data", ws.shards, "--json").json()
    assert shards["split"] == "val" and 0 <= shards["masked_token_accuracy"] <= 1


def test_seq2seq_eval_reproduces_training_evaluation(ws):
    got = ok("eval", "--model", ws.s2s, "--data", ws.pairs, "--json").json()
    want = _last_eval(ws.s2s)
    assert got["task"] == "seq2seq" and got["split"] == "val" and got["n"] == 10
    for key in ("val_loss", "exact_match", "cer", "bleu"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    every = ok(
        "eval", "--model", ws.s2s, "--data", ws.pairs, "--split", "all", "--limit", "7", "--json"
    ).json()
    assert every["n"] == 7


def test_prompting_a_base_model(ws):
    zero = ok("eval", "--model", ws.base, "--data", ws.csv, "--json").json()
    assert zero["task"] == "classify" and zero["method"] == "zero-shot prompting" and zero["split"] == "all"
    assert zero["n"] == 40 and zero["examples"] == [] and zero["prompt"].endswith("\nLabel:")
    few = ok("eval", "--model", ws.base, "--data", ws.csv, "--shots", "3", "--seed", "2", "--json").json()
    assert few["split"] == "test" and few["n"] == 8 and len(few["examples"]) == 3
    assert {e["label"] for e in few["examples"]} == {"cat", "dog"}
    again = ok("eval", "--model", ws.base, "--data", ws.csv, "--shots", "3", "--seed", "2", "--json").json()
    timing = ("seconds", "tokens_per_s", "peak_rss_mb")
    assert {k: v for k, v in again.items() if k not in timing} == {
        k: v for k, v in few.items() if k not in timing
    }
    assert (
        again["examples"]
        != ok("eval", "--model", ws.base, "--data", ws.csv, "--shots", "3", "--json").json()["examples"]
    )  # another --seed, other examples
    mc = ok("eval", "--model", ws.base, "--data", ws.mc, "--json").json()
    assert mc["task"] == "choice" and mc["n"] == 30 and len(mc["labels"]) == 3
    instr = ok("eval", "--model", ws.instruct, "--data", ws.csv, "--shots", "2", "--json").json()
    assert instr["prompt_format"] == "instruct" and "### Response:" in instr["prompt"]
    shown = ok("eval", "--model", ws.base, "--data", ws.csv, "--shots", "2", "--show-prompt").out
    assert "few-shot examples (2, in prompt order)" in shown and "Label each text as cat or dog." in shown


def test_compare_table(ws):
    args = ["eval", "--compare", "--data", ws.csv, "--row", f"zero-shot={ws.base}", "--row",
            f"2-shot={ws.base},shots=2", "--row", str(ws.cls), "--row", str(ws.lora)]  # fmt: skip
    table = ok(*args, "--json").json()
    assert [r["name"] for r in table["rows"]] == ["zero-shot", "2-shot", "fine-tuned", "LoRA"]
    assert table["split"] == "test" and all(r["n"] == 8 for r in table["rows"])
    assert table["recipe"]["origin"] == f"the config.json of {ws.cls}"
    head = _test_metrics(ws.cls)
    assert table["rows"][2]["accuracy"] == pytest.approx(head["accuracy"])
    text = ok(*args).out
    lines = text.splitlines()
    assert lines[0].startswith("classify on ") and "accuracy" in lines[2] and "f1" in lines[2]
    assert [ln.split()[0] for ln in lines[4:]] == ["zero-shot", "2-shot", "fine-tuned", "LoRA"]
    # the fine-tuned row is the single evaluation
    single = ok("eval", "--model", ws.cls, "--data", ws.csv, "--json").json()
    assert table["rows"][2]["f1"] == single["f1"]


def test_perturbation_and_out_of_domain(ws):
    args = ["eval", "--model", ws.cls, "--data", ws.csv, "--perturb", "typos=0.3,case=0.3", "--json"]
    a, b = ok(*args).json(), ok(*args).json()
    assert a["perturbation"] == "typos=0.3,case=0.3"
    assert a["perturbed"]["confusion_matrix"] == b["perturbed"]["confusion_matrix"]  # seeded
    assert a["drop"]["accuracy"] == pytest.approx(a["accuracy"] - a["perturbed"]["accuracy"])
    assert a["drop"]["loss"] == pytest.approx(a["perturbed"]["loss"] - a["loss"])
    other = ok(*args[:-1], "--seed", "9", "--json").json()
    assert other["perturbed"]["loss"] != a["perturbed"]["loss"]
    lm = ok("eval", "--model", ws.base, "--data", ws.shards, "--ood-data", ws.inst, "--perturb",
            "whitespace=0.5", "--json").json()  # fmt: skip
    assert lm["ood"]["data"] == str(ws.inst) and lm["ood"]["split"] == "all"
    assert lm["ood_drop"]["val_loss"] == pytest.approx(lm["ood"]["val_loss"] - lm["val_loss"])
    assert lm["perturbed"]["tokens"] > 0
    text = ok(*args[:-1], "--ood-data", ws.csv).out
    assert "robustness (typos=0.3,case=0.3; drop > 0 means worse)" in text and "out of domain" in text
    s2s = ok("eval", "--model", ws.s2s, "--data", ws.pairs, "--perturb", "typos=0.5", "--json").json()
    assert set(s2s["drop"]) >= {"exact_match", "cer", "bleu"}


def test_hugging_face_dir_and_a_bpe_model(tmp_path, ws):
    """A Hugging Face GPT-2 directory evaluates like the run it was exported from."""
    import torch

    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.runs import save_run_files

    ok("tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input", ws.text, "--out",
       tmp_path / "bpe.json")  # fmt: skip
    from scratchllm.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "bpe.json")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=128, n_layer=1, n_head=2, n_embd=16)
    run = save_run_files(tmp_path / "run", GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)
    ok("convert", "--to-hf", run, "--out", tmp_path / "hf")
    got = [
        ok("eval", "--model", m, "--data", ws.csv, "--shots", "2", "--json").json()
        for m in (run, tmp_path / "hf")
    ]
    assert got[0]["confusion_matrix"] == got[1]["confusion_matrix"]
    assert got[0]["loss"] == pytest.approx(got[1]["loss"], rel=1e-5)


def _one_line_error(res, verb="eval"):
    assert res.rc == 2, (res.rc, res.err)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"scratchllm {verb}: error: "), res.err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--model", "{base}", "--data", "{csv}", "--perturb", "typo=0.1"], "unknown perturbation"),
        (["--model", "{cls}", "--data", "{csv}", "--shots", "2"], "own head"),
        (["--model", "{base}", "--data", "{shards}", "--task", "mlm"], "does not apply"),
        (["--model", "{bert}", "--data", "{csv}"], "fine-tune it first"),
        (["--model", "{base}", "--data", "{root}/nope.csv"], "data not found"),
        (["--model", "{base}", "--data", "{shards}", "--split", "test"], "val and a train split"),
        (["--model", "{base}", "--data", "{csv}", "--shots", "40"], "needs 20 examples labelled"),
        (["--model", "{base}", "--data", "{csv}", "--split", "all", "--shots", "1"], "--shots-from"),
        (["--compare", "--data", "{csv}"], "needs rows"),
        (["--data", "{csv}", "--row", "{base},temperature=2"], "options are shots=K"),
        (["--model", "{base}", "--data", "{csv}", "--row", "{cls}"], "drop --model"),
        (["--data", "{csv}", "--row", "{base}", "--row", "{bert}"], "different tasks"),
        (["--model", "{s2s}", "--data", "{shards}"], "token shards"),
        (["--model", "{base}", "--data", "{csv}", "--task", "instruct"], "looks like labelled data"),
        (["--model", "{base}", "--data", "{csv}", "--shots", "-1"], "--shots must be >= 0"),
        (["--model", "{base}", "--data", "{csv}", "--limit", "0"], "--limit must be >= 1"),
        (["--model", "{root}/nomodel", "--data", "{csv}"], "model not found"),
    ],
)
def test_bad_input_is_one_line(ws, argv, words):
    names = {k: str(v) for k, v in vars(ws).items()}
    res = cli("eval", *(a.format(**names) for a in argv))
    assert words in _one_line_error(res)


def test_lora_language_model_scores_like_its_base(tmp_path, ws):
    """A fresh gpt-lora model (B = 0) is its base: the same loss on the same shards."""
    from scratchllm.load import load_model
    from scratchllm.model.finetuned import lora_model_from_base
    from scratchllm.model.lora import LoRAConfig
    from scratchllm.runs import save_run_files

    base = load_model(ws.base)
    lora = lora_model_from_base(base.model, LoRAConfig(r=2, alpha=4.0))
    save_run_files(
        tmp_path / "lora", lora, arch="gpt-lora", model_config=lora.config, tokenizer=base.tokenizer
    )
    a = ok("eval", "--model", ws.base, "--data", ws.shards, "--json").json()
    b = ok("eval", "--model", tmp_path / "lora", "--data", ws.shards, "--json").json()
    assert b["architecture"] == "gpt-lora" and b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)


def test_out_writes_json_and_appends_jsonl(tmp_path, ws):
    out = tmp_path / "deep" / "result.json"
    res = ok("eval", "--model", ws.cls, "--data", ws.csv, "--json", "--out", out, "--quiet")
    assert json.loads(out.read_text()) == res.json()
    again = cli("eval", "--model", ws.cls, "--data", ws.csv, "--out", out)
    assert "already exists" in _one_line_error(again) and json.loads(out.read_text()) == res.json()
    ok("eval", "--model", ws.base, "--data", ws.text, "--out", out, "--force", "--quiet")
    assert json.loads(out.read_text())["task"] == "lm"
    # an occupied --out is refused before the model is even looked for
    early = cli("eval", "--model", tmp_path / "no-such-run", "--data", ws.csv, "--out", out)
    assert "already exists" in _one_line_error(early)
    assert "is a directory" in _one_line_error(
        cli("eval", "--model", ws.cls, "--data", ws.csv, "--out", tmp_path)
    )

    log = tmp_path / "evals.jsonl"
    ok("eval", "--model", ws.base, "--data", ws.shards, "--out", log, "--quiet")
    ok("eval", "--model", ws.base, "--data", ws.shards, "--out", log, "--quiet")
    args = ["eval", "--compare", "--data", ws.csv, "--row", f"zero-shot={ws.base}", "--row", str(ws.cls)]
    table = ok(*args, "--out", log, "--json", "--quiet").json()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 4 and all(x["time"].endswith("+00:00") for x in lines)
    assert lines[0]["val_loss"] == lines[1]["val_loss"] and lines[0]["task"] == "lm"
    assert [x["name"] for x in lines[2:]] == ["zero-shot", "fine-tuned"]
    assert all(x["split"] == "test" and x["task"] == "classify" for x in lines[2:])
    assert lines[3]["accuracy"] == table["rows"][1]["accuracy"]


def test_threads_flag(ws, monkeypatch):
    import scratchllm.device

    bad = cli("eval", "--model", ws.base, "--data", ws.shards, "--threads", "-1")
    assert "--threads must be >= 0" in _one_line_error(bad)
    seen = []
    monkeypatch.setattr(scratchllm.device, "set_threads", seen.append)
    ok("eval", "--model", ws.base, "--data", ws.shards, "--threads", "3", "--quiet")
    ok("eval", "--model", ws.base, "--data", ws.shards, "--quiet")
    assert seen == [3]


@pytest.mark.parametrize(
    ("model", "data", "extra", "desc"),
    [
        ("base", "shards", ["--perturb", "case=0.5"], "eval windows (perturbed)"),
        ("bert", "text", [], "eval masked batches"),
        ("s2s", "pairs", ["--limit", "5"], "decode"),
        ("cls", "csv", [], "classify"),
        ("base", "csv", ["--shots", "2"], "score labels"),
        ("base", "mc", ["--limit", "4"], "score choices"),
        ("instruct", "inst", ["--max-new-tokens", "4"], "generate"),
    ],
)
def test_every_task_reports_progress(ws, monkeypatch, model, data, extra, desc):
    """Not a terminal: plain progress lines on stderr (every item here, with the interval at 0);
    stdout stays clean JSON; --quiet silences it."""
    import scratchllm.progress

    real = scratchllm.progress.tracker
    monkeypatch.setattr(scratchllm.progress, "tracker", lambda enabled: real(enabled, interval=0.0))
    argv = ["eval", "--model", getattr(ws, model), "--data", getattr(ws, data), *extra, "--json"]
    res = ok(*argv)
    assert res.json()["task"]
    lines = [ln for ln in res.err.splitlines() if ln.startswith(f"{desc}: ")]
    assert lines and "batches" in lines[-1], res.err
    assert ok(*argv, "--quiet").err == ""


TIMING = ("seconds", "tokens_per_s", "peak_rss_mb", "cuda_max_memory_mb")


@pytest.mark.parametrize(
    ("model", "data", "extra", "metric"),
    [
        ("bert", "text", [], "masked_token_accuracy"),
        ("instruct", "inst", ["--max-new-tokens", "4"], "rouge_l"),
        ("base", "mc", ["--limit", "9"], "accuracy"),
        ("base", "csv", ["--shots", "2"], "accuracy"),
        ("s2s", "pairs", ["--limit", "20"], "exact_match"),
    ],
)
def test_perturbation_on_every_task(ws, model, data, extra, metric):
    """Rate 0 scores exactly the clean inputs; a real rate is seeded (the same twice) and its drop is
    clean - perturbed for a higher-is-better metric."""
    base = ["eval", "--model", getattr(ws, model), "--data", getattr(ws, data), *extra, "--json", "--quiet"]
    zero = ok(*base, "--perturb", "typos=0").json()
    clean = {k: v for k, v in zero.items() if k not in (*TIMING, "perturbed", "drop", "perturbation")}
    assert zero["perturbed"][metric] == clean[metric] and zero["drop"][metric] == 0
    a = ok(*base, "--perturb", "typos=0.4,case=0.3").json()
    b = ok(*base, "--perturb", "typos=0.4,case=0.3").json()
    strip = lambda r: {k: v for k, v in r["perturbed"].items() if k not in TIMING}  # noqa: E731
    assert strip(a) == strip(b)
    assert a["drop"][metric] == pytest.approx(a[metric] - a["perturbed"][metric])
    assert a[metric] == clean[metric]  # the clean score does not depend on the perturbation
