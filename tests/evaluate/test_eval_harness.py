"""lm-evaluation-harness against ``scratchllm serve``: its ``local-completions`` model scores a
local multiple-choice task (a task YAML and a JSON Lines file made here; nothing from the hub)
and gets the same log-likelihoods — and so the same accuracy and loss — as ``scratchllm eval``.

Skipped when ``lm-eval`` is not installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from eval_helpers import ok

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))

QUESTIONS = [
    ("which animal says meow", ["cat", "dog", "cow"], 0),
    ("which animal says woof", ["cat", "dog", "cow"], 1),
    ("which animal says moo", ["cat", "dog", "cow"], 2),
    ("what is two plus two", ["three", "four"], 1),
    ("which colour is the sky", ["blue", "green", "red", "grey"], 0),
    ("what do bees make", ["honey", "milk"], 0),
]

TASK_YAML = """\
task: scratchllm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: harness_choices
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture
def harness_env(tmp_path, monkeypatch):
    """Offline Hugging Face caches under tmp_path, set before lm_eval/datasets are imported."""
    for k, v in {
        "HF_HOME": tmp_path / "hf",
        "HF_DATASETS_CACHE": tmp_path / "hf" / "datasets",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(k, str(v))
    return pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")


def _tiny_run(root: Path) -> Path:
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.runs import save_run_files
    from scratchllm.tokenizer.char import CharTokenizer

    text = "Question: Answer:\n " + " ".join(q + " " + " ".join(c) for q, c, _ in QUESTIONS)
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=128, n_layer=1, n_head=2, n_embd=16)
    return save_run_files(root / "mc-base", GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)


def test_lm_eval_local_completions_agrees_with_scratchllm_eval(tmp_path, harness_env):
    from serve_helpers import start_thread_server

    lm_eval = harness_env
    from lm_eval.tasks import TaskManager

    run = _tiny_run(tmp_path)
    ours = tmp_path / "mc.jsonl"
    ours.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS)
    )
    # lm-eval scores target_delimiter + choice; scratchllm's plain format scores " choice\n" (the
    # newline keeps a choice that prefixes another from winning), so the harness's copy of the
    # choices carries the newline.
    theirs = tmp_path / "mc-harness.jsonl"
    theirs.write_text(
        "".join(
            json.dumps({"question": q, "harness_choices": [x + "\n" for x in c], "answer": a}) + "\n"
            for q, c, a in QUESTIONS
        )
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "scratchllm_mc.yaml").write_text(TASK_YAML.format(data=json.dumps(str(theirs))))

    server = start_thread_server(run, max_batch=4)
    try:
        out = lm_eval.simple_evaluate(
            model="local-completions",
            # tokenizer_backend is auto-detected: the server's /tokenizer_info + /tokenize ("remote")
            model_args={
                "base_url": server.url + "/v1/completions",
                "model": run.name,
                "num_concurrent": 1,
                "max_retries": 1,
            },
            tasks=["scratchllm_mc"],
            task_manager=TaskManager(include_path=str(tasks)),
            num_fewshot=0,
            log_samples=True,
            batch_size=1,
        )
    finally:
        server.stop()
    assert out["config"]["model"] == "local-completions"
    metrics = out["results"]["scratchllm_mc"]
    samples = sorted(out["samples"]["scratchllm_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(QUESTIONS)
    harness_ll = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]

    # The same items through scratchllm's own scoring (the library, then the CLI).
    from scratchllm.evaluate.prompting import PromptFormat, score_options
    from scratchllm.load import load_model

    loaded = load_model(str(run))
    fmt = PromptFormat()
    scored = score_options(
        loaded.model,
        loaded.tokenizer,
        fmt,
        [fmt.choice_context([], q) for q, _, _ in QUESTIONS],
        [c for _, c, _ in QUESTIONS],
    )
    for mine, theirs_ll in zip(scored, harness_ll):
        assert [s.logprob for s in mine.scores] == pytest.approx(theirs_ll, abs=1e-4)

    res = ok("eval", "--model", run, "--data", ours, "--task", "choice", "--normalization", "none", "--json")
    ev = res.json()
    assert ev["rows"] == len(QUESTIONS) and ev["split"] == "all"
    picks = [max(range(len(ll)), key=lambda i: (ll[i], -i)) for ll in harness_ll]
    acc = sum(p == a for p, (_, _, a) in zip(picks, QUESTIONS)) / len(QUESTIONS)
    assert metrics["acc,none"] == pytest.approx(acc)
    assert ev["accuracy"] == pytest.approx(metrics["acc,none"])
    assert ev["accuracy_by_normalization"]["none"] == pytest.approx(metrics["acc,none"])
    nll = [-(ll[a] - math.log(sum(math.exp(v) for v in ll))) for ll, (_, _, a) in zip(harness_ll, QUESTIONS)]
    assert ev["loss"] == pytest.approx(sum(nll) / len(nll), abs=1e-4)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
