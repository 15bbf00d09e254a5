"""scratchllm — build a large language model from scratch and run every stage of its life.

The package is laid out as the pipeline a learner walks through::

    tokenizer → data → model → train → generate → finetune → evaluate

Heavy libraries (torch, matplotlib, transformers) are imported lazily by the modules that need
them, so ``import scratchllm`` and ``scratchllm --help`` stay fast.
"""

from scratchllm.errors import ScratchLLMError

__version__ = "0.1.0"

__all__ = ["ScratchLLMError", "__version__"]
