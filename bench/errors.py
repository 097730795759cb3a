"""The one exception type the CLI turns into a one-line error (no traceback)."""


class BenchError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, an unknown name.

    The message must fit on one line and say what was expected and what was found.
    """
