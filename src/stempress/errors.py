"""One error type for everything a user can cause: the CLI prints its message as one line and exits 1."""


class StempressError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""


def require_choice(value: object, choices: tuple[object, ...] | list[object], what: str, where: str = "") -> None:
    """Refuse a value outside a fixed set of choices, listing them (one line)."""
    if value not in choices:
        prefix = f"{where}: " if where else ""
        raise StempressError(f"{prefix}{what} {value!r} is unknown; use one of {', '.join(map(str, choices))}")


def os_error_message(exc: OSError, path: object, role: str = "output") -> str:
    """One line for an OS error met while writing ``path``: what went wrong there, in words, and the fix.

    ``path`` is the name the user gave (not a hidden temporary name); ``role`` says what it is ("output",
    "results folder")."""
    import errno
    from pathlib import Path

    where = Path(str(path))
    parent = where.parent if str(where.parent) else Path(".")
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device holding {where} (the disk or your quota is full), so it was not "
                f"written; free some space or choose another path for the {role}")
    if code == errno.EFBIG:
        return (f"{where} grew past the largest file allowed here (ulimit -f, or the file system's limit), so it "
                f"was not written; raise the limit or choose another path for the {role}")
    if code == errno.EROFS:
        return f"{where}: the file system is read-only; choose a path on a writable disk for the {role}"
    if code in (errno.EACCES, errno.EPERM):
        return f"{where}: no permission to write in {parent}; choose a folder you can write to for the {role}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in [where, parent, *parent.parents] if p.exists() and not p.is_dir()), parent)
        return f"{where}: {blocker} is a file, not a folder; choose another path for the {role}"
    if code == errno.ENOENT:
        return (f"{where}: files cannot be created in {parent} (it is missing or not an ordinary folder); "
                f"choose another path for the {role}")
    if code == errno.ENAMETOOLONG:
        return f"{where}: the name is too long for this file system; choose a shorter name for the {role}"
    reason = exc.strerror or str(exc).splitlines()[0]
    return f"{where}: {reason}; choose another path for the {role}"


def require_distinct_names(names: list[str], what: str, empty_hint: str, fix: str) -> None:
    """Refuse an empty list of ``what`` (sinks, reducers) or two with one name: results are keyed by name."""
    if not names:
        raise StempressError(f"no {what} given; {empty_hint}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise StempressError(f"two {what} are named {', '.join(twice)}; {fix}")
