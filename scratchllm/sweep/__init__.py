"""Scaling-law sweeps: train a ladder of model sizes at several compute budgets, fit L(N, D).

* :mod:`~scratchllm.sweep.ladder` — the sizes, the budgets, and which sizes each budget trains;
* :mod:`~scratchllm.sweep.flops` — how N and C are counted (the papers' conventions);
* :mod:`~scratchllm.sweep.runner` — planning, training through the one loop, resuming;
* :mod:`~scratchllm.sweep.fit` — Chinchilla approaches 2 and 3 with bootstrap intervals;
* :mod:`~scratchllm.sweep.report`, :mod:`~scratchllm.sweep.plots` — sweep.md and the PNGs.

``scratchllm sweep`` (:mod:`scratchllm.cli.sweep`) drives it; docs/guide/scaling.md explains it.
"""
