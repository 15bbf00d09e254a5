"""Allow ``python -m scratchllm ...``."""

import sys

from scratchllm.cli.main import main

sys.exit(main())
