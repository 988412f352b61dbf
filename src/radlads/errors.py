"""The one error type users see.

Anything that is the user's fault (bad path, bad config value, unsupported model) raises
RadladsError; the CLI prints its message as a single line and exits non-zero. Everything else
is a bug and keeps its traceback.
"""


class RadladsError(Exception):
    """A user-facing error: the message is printed alone, on one line."""

    exit_code = 2
