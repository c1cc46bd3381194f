"""atomic_output: whole or nothing, never replacing what appeared meanwhile, naming OS errors, cleaning up after
dead writers; on real files, a real tmpfs where this machine lets us mount one, and a real RLIMIT_FSIZE."""

from __future__ import annotations

import errno
import logging
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stempress import atomic
from stempress.atomic import HOST_TAG, atomic_output, partial_folder, stale_partials, watch_outputs
from stempress.errors import StempressError
from tiny_fs import tiny_fs


def _dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_file_that_appears_during_the_write_is_not_replaced(tmp_path):
    out = tmp_path / "out.bin"
    with pytest.raises(StempressError, match=r"appeared while this write was running.*--force"), \
            atomic_output(out) as tmp:
        tmp.write_bytes(b"mine")
        out.write_bytes(b"theirs")  # another process finished first
    assert out.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_without_hard_links_the_claim_still_never_replaces(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "out.bin"
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"first")
    assert out.read_bytes() == b"first"
    with pytest.raises(StempressError, match="appeared"), atomic_output(tmp_path / "second.bin") as tmp:
        tmp.write_bytes(b"mine")
        (tmp_path / "second.bin").write_bytes(b"theirs")
    assert (tmp_path / "second.bin").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "second.bin"]


def test_force_replaces_and_the_mode_follows_the_umask(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with atomic_output(out, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_dead_writers_partial_is_removed_with_a_note_and_a_live_ones_stays(tmp_path, caplog):
    out = tmp_path / "out.bin"
    dead = tmp_path / f".out.bin.{_dead_pid()}-{HOST_TAG}.abcdefgh.partial"
    live = tmp_path / f".out.bin.{os.getpid()}-{HOST_TAG}.abcdefgh.partial"
    dead_folder = tmp_path / f".out.bin.{_dead_pid()}-{HOST_TAG}.stagings.partial"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    dead_folder.mkdir()
    (dead_folder / "events.toml").write_text("half")
    assert set(stale_partials(out)) == {dead, dead_folder}
    with caplog.at_level(logging.WARNING, logger="stempress"), atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert not dead.exists() and not dead_folder.exists() and live.exists()
    notes = [r.getMessage() for r in caplog.records]
    assert any(str(dead) in n and "killed" in n for n in notes), notes


def test_a_killed_writers_partial_is_known_by_the_next_write(tmp_path):
    """A real writer process dies by SIGKILL inside atomic_output; the next write of the same OUT removes what it
    left (file or staging folder), and nothing else."""
    out = tmp_path / "out.bin"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from stempress.atomic import atomic_output, partial_folder
        out = Path({str(out)!r})
        with partial_folder(out) as staging, atomic_output(out) as tmp:
            tmp.write_bytes(b"half")
            (staging / "x").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", script], check=False)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith(".out.bin.") and n.endswith(".partial") for n in left), left
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize(("where", "words"), [
    ("afile/out.h5", ["afile is a file, not a folder"]),
    ("afile/deeper/out.h5", ["afile is a file, not a folder"]),
    ("/proc/out.h5", ["/proc/out.h5", "cannot be created in /proc"]),
    ("/sys/out.h5", ["/sys/out.h5", "no permission"]),
])
def test_os_errors_name_the_output_and_the_fix(tmp_path, where, words):
    (tmp_path / "afile").write_text("not a folder")
    out = Path(where) if where.startswith("/") else tmp_path / where
    with pytest.raises(StempressError) as caught, atomic_output(out) as tmp:
        tmp.write_bytes(b"never")
    message = str(caught.value)
    assert "\n" not in message and "choose" in message
    for word in words:
        assert word in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_folders_made_for_a_failed_write_are_removed_again(tmp_path):
    out = tmp_path / "new" / "deeper" / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the source broke")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole"


def test_watch_outputs_names_what_was_written_and_discarded(tmp_path):
    with watch_outputs() as journal:
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"a")
        with pytest.raises(KeyError), atomic_output(tmp_path / "b.bin") as tmp:
            raise KeyError("stop")
    assert journal.written == [tmp_path / "a.bin"] and journal.discarded == [tmp_path / "b.bin"]


def test_partial_folder_is_removed_after_use(tmp_path):
    with partial_folder(tmp_path / "out.toml") as folder:
        assert folder.is_dir() and folder.name.startswith(".out.toml.")
    assert list(tmp_path.iterdir()) == []


FILL = textwrap.dedent("""
    import sys
    from pathlib import Path
    from stempress.atomic import atomic_output
    from stempress.errors import StempressError
    try:
        with atomic_output(Path(sys.argv[1])) as tmp, open(tmp, "wb") as f:
            for _ in range(64):
                f.write(bytes(64 * 1024))
                f.flush()
    except StempressError as exc:
        print(exc)
        sys.exit(1)
""")


def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE (ulimit -f) of 1 MiB: writes fail with EFBIG (Python ignores SIGXFSZ)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024**2, 1024**2))

    out = tmp_path / "big.bin"
    done = subprocess.run([sys.executable, "-c", FILL, str(out)], capture_output=True, text=True, preexec_fn=limit)
    assert done.returncode == 1, done.stderr
    assert "largest file allowed" in done.stdout and str(out) in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    with tiny_fs(tmp_path) as disk:
        out = disk / "big.bin"
        done = subprocess.run([sys.executable, "-c", FILL, str(out)], capture_output=True, text=True)
        assert done.returncode == 1, done.stderr
        assert "no space left" in done.stdout and str(out) in done.stdout
        assert list(disk.iterdir()) == []


@pytest.mark.skipif(atomic._SYNC_FILE_RANGE is None, reason="sync_file_range is Linux's")
def test_early_writeback_starts_the_kernel_writing_every_so_many_bytes_and_never_for_no_file(tmp_path, monkeypatch):
    calls: list[tuple[int, int]] = []
    real = atomic._SYNC_FILE_RANGE
    monkeypatch.setattr(atomic, "_SYNC_FILE_RANGE", lambda fd: calls.append((fd, real(fd))) or 0)
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(64 * 1024))
    writeback = atomic.EarlyWriteback(path, every=40 * 1024)
    writeback.wrote(30 * 1024)
    assert calls == []
    writeback.wrote(30 * 1024)  # 60 KiB reported: past 40 KiB once
    assert len(calls) == 1 and calls[0][1] == 0  # the real call, on the file's own descriptor, succeeded
    assert os.path.samefile(f"/proc/self/fd/{calls[0][0]}", path)
    writeback.close()
    writeback.wrote(100 * 1024)  # closed: nothing more
    none = atomic.EarlyWriteback(None, every=1)
    none.wrote(10)
    assert len(calls) == 1


def test_a_durable_archive_has_its_chunks_written_back_while_it_is_made(tmp_path, monkeypatch):
    import numpy as np

    from stempress.data.base import ArraySource
    from stempress.store.compress import compress

    calls: list[int] = []
    monkeypatch.setattr(atomic, "WRITEBACK_BYTES", 1)  # after every chunk
    if atomic._SYNC_FILE_RANGE is not None:
        real = atomic._SYNC_FILE_RANGE
        monkeypatch.setattr(atomic, "_SYNC_FILE_RANGE", lambda fd: calls.append(real(fd)) or 0)
    cube = np.random.default_rng(0).poisson(1.0, (4, 4, 16, 16)).astype(np.uint16)
    report = compress(ArraySource(cube), tmp_path / "a.h5", codec="blosc_lz4", chunks=(2, 4, 16, 16), workers=2)
    assert report.direct and report.path.exists()
    if atomic._SYNC_FILE_RANGE is not None:
        assert calls == [0, 0]  # once per chunk, each a successful call
