"""The one exception type for mistakes a user can make.

Library code raises :class:`ScratchLLMError` with a message that says what was wrong *and* what
to do about it. The CLI prints it as a single line and exits with :data:`EXIT_USAGE` — never a
bare traceback. Anything else that escapes is a bug in scratchllm and keeps its traceback.
"""

from __future__ import annotations

#: Exit code for user errors (bad input, bad config, missing files).
EXIT_USAGE = 2


class ScratchLLMError(Exception):
    """A problem the user can fix (bad input, bad config, missing or corrupt file).

    ``exit_code`` lets a few situations carry a documented code of their own (for example a
    training run stopped by repeated non-finite losses); it defaults to :data:`EXIT_USAGE`.
    """

    def __init__(self, message: str, *, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
