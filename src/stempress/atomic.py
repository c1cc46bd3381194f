"""Output files appear whole or not at all, and never replace what the user had unless asked.

Every output is written under a hidden temporary name beside the target, ``.OUT.PID-HOST.XXXXXXXX.partial``,
and made visible only when complete. Without ``force`` it becomes OUT through a hard link, which the
kernel refuses when OUT exists: the "never replace" check holds at the very moment the file appears, not
only when the write began (two writers of one OUT: the second to finish fails and replaces nothing). With
``force`` it is renamed onto OUT.

A writer killed by SIGKILL or a power cut leaves its partial behind. The partial's name carries the writer's
process id and a tag of its host, so the next write of the same OUT knows a dead writer's leftover from a write
still in progress, removes it, and says so (a ``note`` on the ``stempress`` logger, which the CLI prints).

OS errors (a full disk, a read-only or pseudo file system, no permission, a file where a folder should be)
become one ``StempressError`` line naming the output and the fix; see ``stempress.errors.os_error_message``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from stempress.errors import StempressError, os_error_message

log = logging.getLogger("stempress")

PARTIAL_SUFFIX = ".partial"
#: errno of a file system that has no hard links (FAT, some FUSE and SMB mounts): publish by claiming OUT.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}
#: errno that only a write can cause: inside the block they are the output's fault, never the input's.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: Read once at import: os.umask can only be read by setting it, which would race with other threads.
_UMASK = _read_umask()
#: A short tag of this host in partial names: a process id means something only on the host that issued it.
HOST_TAG = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


@dataclass
class OutputJournal:
    """What the writes of one process made visible and what they discarded: the CLI names them after a
    failure or Ctrl-C ("no output was written" or what was kept)."""

    written: list[Path] = field(default_factory=list)
    discarded: list[Path] = field(default_factory=list)


_journals: list[OutputJournal] = []


@contextmanager
def watch_outputs() -> Iterator[OutputJournal]:
    """Record, while the block runs, every output ``atomic_output`` publishes or discards."""
    journal = OutputJournal()
    _journals.append(journal)
    try:
        yield journal
    finally:
        _journals.remove(journal)


def _record(kind: str, path: Path) -> None:
    for journal in _journals:
        getattr(journal, kind).append(path)


def partial_prefix(out: Path) -> str:
    """The start of this process's temporary names for ``out``."""
    return f".{out.name}.{os.getpid()}-{HOST_TAG}."


def _partial_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(out.name)}\.(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})\.[A-Za-z0-9_]+"
                      rf"{re.escape(PARTIAL_SUFFIX)}$")


def _alive(pid: int) -> bool:
    """Whether a process with this id exists here (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_partials(out: Path) -> list[Path]:
    """Temporary files and folders of earlier writes of ``out`` whose writer, on this host, is gone."""
    out = Path(out)
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return []
    pattern = _partial_pattern(out)
    stale = []
    for entry in entries:
        found = pattern.match(entry.name)
        if found and found["host"] == HOST_TAG and not _alive(int(found["pid"])):
            stale.append(entry)
    return stale


def remove_stale_partials(out: Path) -> tuple[Path, ...]:
    """Delete what killed writes of ``out`` left behind, saying so; a partial of a live writer stays."""
    removed = []
    for entry in stale_partials(out):
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
        log.warning("removed %s, left by an earlier write of %s that was killed", entry, out)
    return tuple(removed)


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


@contextmanager
def _output_folder(out: Path) -> Iterator[None]:
    """Make ``out``'s folder if missing; take the new folders away again if the write fails."""
    created = missing_folders(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StempressError(os_error_message(exc, out)) from None
    try:
        yield
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def check_new_output(out: Path, force: bool) -> None:
    """Refuse a folder, or an existing file without ``force``: before any work, so nothing is wasted."""
    if out.is_dir():
        raise StempressError(f"{out} is a folder; give a file name for the output")
    if not force and (out.exists() or out.is_symlink()):
        raise StempressError(f"{out} already exists; pass --force to replace it, or choose another name")


@contextmanager
def atomic_output(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``out``'s folder; make it ``out`` only if the block completes.

    A crash, an exception or Ctrl-C deletes the temporary file, so ``out`` is never left half-written, and
    nothing the user had is replaced unless ``force`` is set: not even a file that another process made
    ``out`` while this one was writing.
    """
    out = Path(out)
    check_new_output(out, force)
    with _output_folder(out):
        remove_stale_partials(out)
        try:
            fd, name = tempfile.mkstemp(dir=out.parent, prefix=partial_prefix(out), suffix=PARTIAL_SUFFIX)
        except OSError as exc:
            raise StempressError(os_error_message(exc, out)) from None
        os.close(fd)
        tmp = Path(name)
        try:
            with writing(out):
                yield tmp
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what a plain open() would
                _fsync(tmp)  # before it gets its name: OUT must never name a file whose data is not on disk
                publish(tmp, out, force=force)
        except BaseException:
            tmp.unlink(missing_ok=True)
            _record("discarded", out)
            raise
    _fsync(out.parent, folder=True)  # the new name itself is on disk only once its folder is synced
    _record("written", out)


@contextmanager
def writing(out: Path) -> Iterator[None]:
    """An OS error only a write can cause (a full or read-only disk) becomes one line naming ``out``: around the
    writes into an ``atomic_output``, and around those a writer makes outside its block (a sink's ``consume``)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise StempressError(os_error_message(exc, out)) from None


def _fsync(path: Path, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not folder:  # some file systems cannot sync a folder; a file that cannot be synced is an error
            raise
    finally:
        os.close(fd)


#: Bytes a writer reports between two early writebacks (``EarlyWriteback``).
WRITEBACK_BYTES = 4 * 1024**2


def _sync_file_range() -> Callable[[int], int] | None:
    """Linux's ``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` from libc (Python's os lacks it), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda fd: function(fd, 0, 0, 2)  # 2: SYNC_FILE_RANGE_WRITE, start writing what is dirty, no waiting


_SYNC_FILE_RANGE = _sync_file_range()


class EarlyWriteback:
    """Has the kernel start writing a file's dirty pages to disk while its writer goes on (each time the writer
    has reported ``every`` more bytes), so the fsync that publishes the file waits for the last pages only: on
    this project's ext4 the fsync of a 20 MiB archive went from ~18 ms to ~4 ms (the publish stage of
    benchmarks/parallel_vs_filter.py). Only a hint that moves work earlier: the fsync still makes the file durable.
    Linux only; elsewhere, for ``path`` None, or when the file cannot be opened, it does nothing."""

    def __init__(self, path: Path | None, every: int | None = None) -> None:
        self.every, self._since, self._fd = every or WRITEBACK_BYTES, 0, None
        if path is not None and _SYNC_FILE_RANGE is not None:
            with suppress(OSError):
                self._fd = os.open(path, os.O_RDONLY)  # enough for sync_file_range; the writer has its own

    def wrote(self, nbytes: int) -> None:
        """The writer handed ``nbytes`` more to the file."""
        self._since += nbytes
        if self._fd is not None and self._since >= self.every and _SYNC_FILE_RANGE is not None:
            self._since = 0
            _SYNC_FILE_RANGE(self._fd)  # its result is ignored: a failure here leaves the work to the fsync

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def publish(tmp: Path, out: Path, *, force: bool = False) -> None:
    """Give the complete file ``tmp`` the name ``out``; without ``force`` never replace an existing ``out``."""
    if force:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)  # EEXIST if out exists now: the check and the appearance are one step
    except FileExistsError:
        raise _appeared(out) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _claim_then_replace(tmp, out)
        return
    tmp.unlink()


def _claim_then_replace(tmp: Path, out: Path) -> None:
    """Where hard links are missing: create ``out`` exclusively (empty), then rename the complete file onto it.
    Still never replaces another's file; a reader may see an empty ``out`` for the instant between."""
    try:
        os.close(os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK))
    except FileExistsError:
        raise _appeared(out) from None
    os.replace(tmp, out)


def _appeared(out: Path) -> StempressError:
    return StempressError(f"{out} appeared while this write was running (another process wrote it) and was left "
                          "as it is; pass --force to replace it, or choose another name")


@contextmanager
def exclusive_folder(folder: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (made if missing) while a command writes files into it, so two
    commands writing one results folder cannot mix or replace each other's files. The lock is an ``flock`` on
    the folder itself: nothing is left inside it, and a killed holder's lock goes with its process."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StempressError(os_error_message(exc, folder, role="results folder")) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StempressError(f"{folder} is being written by another stempress command right now; wait for it to "
                             "finish or choose another folder (--out)") from None
    try:
        yield folder
    finally:
        os.close(fd)


@contextmanager
def partial_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` for staging, named like ``atomic_output``'s partials (so a killed
    writer's leftover is recognised and removed by the next write of ``out``); deleted when the block ends."""
    out = Path(out)
    with _output_folder(out):
        try:
            folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=partial_prefix(out), suffix=PARTIAL_SUFFIX))
        except OSError as exc:
            raise StempressError(os_error_message(exc, out)) from None
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class _Discarded(Exception):
    """Raised into the contexts of ``discard`` so each ``atomic_output`` deletes its partial file."""


def discard(stack: ExitStack) -> None:
    """Close a stack of ``atomic_output`` s (and ``partial_folder`` s) as a failure would: every partial is deleted
    and nothing gets its name. For writers whose end is not a ``with`` block (a sink's ``abort``)."""
    with suppress(_Discarded):
        stack.__exit__(_Discarded, _Discarded(), None)
