"""``scratchllm explain``: every idea of the pipeline, demonstrated on real numbers.

A topic (``scratchllm explain --list``) runs the project's own code — the same attention, norms,
sampler, KV cache, LoRA, Mixture-of-Experts, masking, tokenizers and schedule that train and
serve — on tiny models built on the spot (a few seconds on a laptop CPU) or on the user's model
(``--model``), and returns an :class:`~scratchllm.explain.result.Explanation`: steps with a short
explanation, the intermediate numbers and checks that hold. The CLI prints it as text or JSON;
with ``--out DIR`` the topic also draws pictures.

* :mod:`~scratchllm.explain.registry` — the topics (:data:`TOPICS`) and :func:`run_topic`;
* :mod:`~scratchllm.explain.result` — ``Explanation`` / ``Step`` and their text and JSON forms;
* :mod:`~scratchllm.explain.context` — the run's inputs and the tiny on-the-spot models;
* one module per group of topics: ``tokens``, ``embeddings``, ``attention``, ``blocks``,
  ``sizes``, ``training``, ``decoding``, ``lora``, ``families``.
"""

from __future__ import annotations

from scratchllm.explain.registry import TOPICS, Topic, get_topic, run_topic
from scratchllm.explain.result import Explanation, Step, to_text

__all__ = ["TOPICS", "Explanation", "Step", "Topic", "get_topic", "run_topic", "to_text"]
