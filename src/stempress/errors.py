"""One error type for everything a user can cause: the CLI prints its message as one line and exits 1."""


class StempressError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""


def require_choice(value: object, choices: tuple[object, ...] | list[object], what: str, where: str = "") -> None:
    """Refuse a value outside a fixed set of choices, listing them (one line)."""
    if value not in choices:
        prefix = f"{where}: " if where else ""
        raise StempressError(f"{prefix}{what} {value!r} is unknown; use one of {', '.join(map(str, choices))}")
