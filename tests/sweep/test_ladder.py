"""Sizes, budgets and per-budget windows: parsing and the one-line errors."""

from __future__ import annotations

import math

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.sweep.ladder import (
    DEFAULT_BUDGETS,
    DEFAULT_LADDER,
    Size,
    format_budget,
    parse_budget,
    parse_budgets,
    parse_size,
    parse_sizes,
    window,
)


def test_parse_size_and_sizes():
    assert parse_size("L2-d48") == Size(2, 48, 3)
    assert parse_size("l3-d64-h2") == Size(3, 64, 2)
    assert parse_sizes(None).mode == "auto" and parse_sizes("all").sizes == DEFAULT_LADDER
    listed = parse_sizes("L2-d64, L1-d16,L2-d32")
    assert listed.mode == "list" and [s.name for s in listed.sizes] == ["L1-d16", "L2-d32", "L2-d64"]
    for bad, match in (
        ("L2x48", "bad model size"),
        ("L2-d50-h4", "not divisible"),
        ("L0-d16", ">= 1"),
        ("L1-d16,L1-d16", "twice"),
        (",", "no size"),
    ):
        with pytest.raises(ScratchLLMError, match=match):
            parse_sizes(bad)


def test_ladder_grows_depth_and_width_together():
    widths = [s.n_embd for s in DEFAULT_LADDER]
    depths = [s.n_layer for s in DEFAULT_LADDER]
    assert widths == sorted(widths) and depths == sorted(depths)
    assert all(s.n_embd % s.n_head == 0 for s in DEFAULT_LADDER)
    # SwiGLU's hidden layer is 8/3 of the width (a multiple of 8), GELU's 4x.
    assert Size(2, 48, 3).model_overrides("swiglu")["ffn_hidden"] == 128
    assert Size(2, 48, 3).model_overrides("gelu")["ffn_hidden"] == 192


def test_parse_budgets():
    assert parse_budgets(None) == DEFAULT_BUDGETS
    assert parse_budgets("1e12, 3e11,1_000_000_000") == (1e9, 3e11, 1e12)
    assert parse_budget("2.5e13") == 2.5e13
    for bad, match in (
        ("abc,1e9", "not a number"),
        ("1e9", "at least 2"),
        ("1e9,-1e9", "positive"),
        ("1e9,inf", "positive"),
        ("1e9,1e9", "twice"),
    ):
        with pytest.raises(ScratchLLMError, match=match):
            parse_budgets(bad)


def test_format_budget_is_short_and_exact():
    assert [format_budget(c) for c in (3e10, 1e11, 2.5e12, 1000.0, 123.0)] == [
        "3e10",
        "1e11",
        "2.5e12",
        "1e3",
        "1.23e2",
    ]


def test_window_is_centred_and_stays_inside():
    xs = [math.log(n) for n in (1e3, 2e3, 4e3, 8e3, 16e3, 32e3)]
    assert window(xs, math.log(8e3), 3) == (2, 5)
    assert window(xs, math.log(10.0), 3) == (0, 3)
    assert window(xs, math.log(1e9), 5) == (1, 6)
    assert window(xs, 0.0, 10) == (0, 6)
