"""Run the peer benchmarks and print one table.

    python -m benchmarks.run --quick          # small sizes, < 2 minutes (CI runs this)
    python -m benchmarks.run --full           # the sizes the README's table reports
    python -m benchmarks.run --full --only generate train

Each ``benchmarks/bench_*.py`` module exposes ``run(quick: bool) -> list[Row | dict]``; rows are
written to ``benchmarks/results/<module>.json`` and summarised in ``results/summary.md``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS_ENV,
    SHARED_DATA,
    Row,
    format_table,
    machine_info,
    results_dir,
    write_results,
)

BENCHMARKS = ["tokenizer", "train", "generate", "serve", "memory", "quality", "runs", "data", "speedrun"]
#: Benchmarks that read ../shared/data (the others generate their inputs).
NEEDS_SHARED = {"tokenizer", "memory", "quality", "speedrun"}


def _as_row(r: Row | dict) -> Row:
    if isinstance(r, Row):
        return r
    r = dict(r)
    r.pop("ratio", None)
    known = {f for f in Row.__dataclass_fields__}
    extra = {k: v for k, v in r.items() if k not in known}
    kwargs = {k: v for k, v in r.items() if k in known}
    kwargs.setdefault("peer_name", "peer")
    kwargs.setdefault("extra", {}).update(extra)
    return Row(**kwargs)


def write_summary(quick: bool) -> str:
    """(Re)build ``summary[-quick].md`` from every benchmark's latest JSON in the results directory.

    Running a subset (``--only train``) refreshes those rows and keeps the others, each benchmark
    with the time and load average of its own run.
    """
    import json

    suffix = "-quick" if quick else ""
    d = results_dir()
    rows: list[Row] = []
    notes: list[str] = []
    for name in BENCHMARKS:
        path = d / f"{name}{suffix}.json"
        if not path.is_file():
            continue
        payload = json.loads(path.read_text())
        rows.extend(_as_row(r) for r in payload["rows"])
        m = payload.get("machine", {})
        notes.append(f"{name}: {payload.get('when')}, load average {m.get('load_average_1m', '?')}")
    info = machine_info()
    summary = (
        f"Measured on {info.get('cpu_model', info['processor'])}, {info['cpus']} cores, "
        f"torch {info.get('torch')} ({'quick' if quick else 'full'} sizes; a load average above the "
        f"core count means other work competed for the CPU).\n\n"
        + format_table(rows)
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
    (d / f"summary{suffix}.md").write_text(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (default)")
    size.add_argument("--full", action="store_true", help="the full sizes reported in the README")
    p.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these benchmarks")
    p.add_argument("--results-dir", help="write the JSON files and summary here (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.results_dir:
        os.environ[RESULTS_ENV] = str(Path(args.results_dir).resolve())
    quick = not args.full
    names = args.only or BENCHMARKS
    all_rows: list[Row] = []
    failed: list[str] = []
    for name in names:
        module_name = f"benchmarks.bench_{name}"
        if importlib.util.find_spec(module_name) is None:
            print(f"[{name}] not available", file=sys.stderr)
            failed.append(name)
            continue
        if name in NEEDS_SHARED and not (SHARED_DATA / "tinyshakespeare.txt").is_file():
            print(
                f"[{name}] FAILED: needs the reference data in {SHARED_DATA} (tinyshakespeare.txt, "
                "gpt2/): put the project's shared/ folder beside the checkout or set SCRATCHLLM_SHARED_DATA",
                file=sys.stderr,
            )
            failed.append(name)
            continue
        print(f"[{name}] running ({'quick' if quick else 'full'}) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            rows = [_as_row(r) for r in importlib.import_module(module_name).run(quick=quick)]
        except Exception as err:  # one broken benchmark must not hide the others' results
            import traceback

            traceback.print_exc()
            print(f"[{name}] FAILED: {err}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        write_results(name + ("-quick" if quick else ""), rows)
        print(format_table(rows), flush=True)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s\n", file=sys.stderr, flush=True)
        all_rows.extend(rows)
    summary = write_summary(quick)
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
