"""One exception family for user-facing failures: the CLI prints them as one line and exits non-zero."""


class ScapError(Exception):
    """A problem the user can fix (bad input, missing asset, incompatible build)."""
