"""One error type for everything a user can cause: the CLI prints its message as one line and exits 1."""


class StempressError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""
