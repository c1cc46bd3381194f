"""Output files appear whole or not at all: written under a temporary name beside the target, then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stempress.errors import StempressError


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: Read once at import: os.umask can only be read by setting it, which would race with other threads.
_UMASK = _read_umask()


@contextmanager
def atomic_output(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``out``'s folder; rename it onto ``out`` only if the block completes.

    A crash, an exception or Ctrl-C deletes the temporary file, so ``out`` is never left half-written, and
    nothing the user had is replaced unless ``overwrite`` is set.
    """
    out = Path(out)
    if out.is_dir():
        raise StempressError(f"{out} is a folder; give a file name for the output")
    if out.exists() and not overwrite:
        raise StempressError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what a plain open() would
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
