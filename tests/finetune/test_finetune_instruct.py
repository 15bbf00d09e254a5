"""Instruction fine-tuning on the book's data: training, held-out scores, responses file, chat."""

from __future__ import annotations

import io
import json

import torch

from scratchllm.data.instruction import get_template
from scratchllm.generate.chat import chat
from scratchllm.generate.engine import generate_responses
from scratchllm.load import load_model


def test_instruct_end_to_end(inst_files, tmp_path, cli, fast_set, monkeypatch):
    run = tmp_path / "run"
    rc, out, err = cli(
        [
            "finetune",
            "instruct",
            "--model",
            inst_files / "base",
            "--data",
            inst_files / "train.json",
            "--val",
            inst_files / "val.json",
            "--test",
            inst_files / "test.jsonl",
            "--template",
            inst_files / "template.json",
            "--out",
            run,
            "--set",
            "max_steps=16",
            "--max-new-tokens",
            "24",
            "--quiet",
            *fast_set,
        ]
    )
    assert rc == 0, err
    assert "test: response loss" in out and "ROUGE-L" in out
    metrics = json.loads((run / "test_metrics.json").read_text())
    test = metrics["test"]
    assert test["n"] == 4 and 0.0 <= test["rouge_l"] <= 1.0 and 0.0 <= test["exact_match"] <= 1.0
    assert abs(test["perplexity"] - 2.718281828 ** test["response_loss"]) < 1e-3 * test["perplexity"]
    responses = json.loads((run / "test_responses.json").read_text())
    assert len(responses) == 4 and all(
        {"instruction", "input", "output", "model_response"} <= set(r) for r in responses
    )
    # The training loss fell: the model is learning the responses (char-level, from scratch).
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    # The run is a plain GPT and remembers its template (used by chat).
    loaded = load_model(run)
    assert loaded.arch == "gpt" and loaded.config["finetune"]["template"]["prompt"].startswith("Q: ")

    monkeypatch.setattr("sys.stdin", io.StringIO("What is the opposite of hot?\n\nexit\nnot read\n"))
    rc, out, err = cli(["chat", "--model", run, "--max-new-tokens", "10"])
    assert rc == 0, err
    assert out.count("\n") == 1  # one reply: the empty line is skipped, 'exit' ends the chat


def test_chat_streams_what_generate_returns(inst_files):
    loaded = load_model(inst_files / "base")
    template = get_template(json.loads((inst_files / "template.json").read_text()))
    pieces: list[str] = []
    turns = chat(
        loaded.model, loaded.tokenizer, template, ["Name a colour."], pieces.append, max_new_tokens=12
    )
    assert turns == 1 and len(pieces) > 1  # streamed piece by piece
    batch = generate_responses(
        loaded.model,
        loaded.tokenizer,
        [template.format("Name a colour."), template.format("Hi there, how are you?")],
        max_new_tokens=12,
    )
    assert "".join(pieces).strip() == batch[0]  # left-padded batch == single prompt


def test_prompt_masking_changes_the_loss(inst_files, tmp_path):
    from scratchllm.data.instruction import encode_instructions, load_instruction_records
    from scratchllm.tasks.instruct import InstructionTask

    loaded = load_model(inst_files / "base")
    records = load_instruction_records(inst_files / "val.json")
    template = get_template(json.loads((inst_files / "template.json").read_text()))
    enc, _ = encode_instructions(records, loaded.tokenizer, template, max_length=96)
    masked = InstructionTask(enc, [], batch_size=4, pad_id=loaded.tokenizer.eot_id)
    full = InstructionTask(enc, [], batch_size=4, pad_id=loaded.tokenizer.eot_id, mask_prompt=False)
    b1, b2 = masked.collate(enc), full.collate(enc)
    assert (b1["targets"] != -100).sum() < (b2["targets"] != -100).sum()
    with torch.no_grad():
        assert masked.loss(loaded.model, b1)[0] != full.loss(loaded.model, b2)[0]


def test_records_without_output_are_refused(tmp_path, cli, inst_files):
    (tmp_path / "d.json").write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "z"}]))
    rc, _, err = cli(
        [
            "finetune",
            "instruct",
            "--model",
            inst_files / "base",
            "--data",
            tmp_path / "d.json",
            "--out",
            tmp_path / "run",
        ]
    )
    assert rc == 2 and "record 2 has no 'output' string" in err
