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


class ScratchLLMWarning(UserWarning):
    """Something the user should know that does not stop the command (a non-finite weight, a
    changed schedule on resume, a cropped prompt). The CLI prints it as
    ``scratchllm VERB: warning: ...``; library users see an ordinary Python warning."""


def os_error_message(err: OSError) -> str:
    """One line for an operating-system error on a path: what failed, on which path, and why."""
    reason = err.strerror or (str(err) if not err.args else str(err.args[-1]))
    path = err.filename
    if path is None:
        return f"{reason}"
    if err.filename2:
        return f"{path} -> {err.filename2}: {reason}"
    return f"{path}: {reason}"
