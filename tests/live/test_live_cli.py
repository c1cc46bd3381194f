"""``stempress serve`` and ``stempress live`` as a user runs them: two processes on a loopback port taken free
at run time (serve --port 0 prints the one it got)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from stempress.data.emd import EMD_DATA_PATH, METADATA_ATTR
from stempress.reduce.output import read_reduced


def _cube(tmp_path: Path) -> tuple[Path, np.ndarray]:
    cube = np.random.default_rng(7).poisson(1.0, (6, 8, 12, 10)).astype(np.uint16)
    path = tmp_path / "cube.npy"
    np.save(path, cube)
    return path, cube


def _serve(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "stempress", "serve", *args, "--port", "0", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    found = re.search(r"on 127\.0\.0\.1:(\d+)", line)
    assert found, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    return proc, int(found.group(1))


def _live(url: str, tmp_path: Path, *extra: str, reduce: bool = True) -> list[str]:
    reducing = ["--reduce", "bf", "--reduced", str(tmp_path / "r.h5"), "--centre", "5.5,4.5", "--bf-radius", "3"]
    return [sys.executable, "-m", "stempress", "live", url, "--scan-shape", "6x8", "--archive", str(tmp_path / "a.h5"),
            "--chunks", "2x4x12x10", *(reducing if reduce else []), "--timeout", "10", *extra]


def test_missing_frames_exit_non_zero_and_the_summary_counts_them(tmp_path):
    path, cube = _cube(tmp_path)
    server, port = _serve(str(path), "--as", "merlin", "--drop", "0.15", "--duplicate", "0.1", "--seed", "4")
    done = subprocess.run(_live(f"merlin://127.0.0.1:{port}", tmp_path), capture_output=True, text=True,
                          timeout=120)
    sent = server.communicate(timeout=60)[0]
    dropped = int(re.search(r"dropped (\d+)", sent).group(1))
    duplicated = int(re.search(r"duplicated (\d+)", sent).group(1))
    assert dropped and duplicated
    assert done.returncode == 1, done.stderr
    assert f"missing {dropped}, duplicate {duplicated}" in done.stdout
    assert "frames missing" in done.stderr and "--allow-missing" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with h5py.File(tmp_path / "a.h5") as f:
        received = f[EMD_DATA_PATH].parent["received"][()]
        assert received.size - received.sum() == dropped
        assert np.array_equal(f[EMD_DATA_PATH][()][received], cube[received])
    images, record = read_reduced(tmp_path / "r.h5")
    assert record["frames"]["missing"] == dropped
    assert np.isnan(next(iter(images["bf"].values()))[~received]).all()


@pytest.mark.parametrize(("protocol", "encoding"), [("dectris", "bs16-lz4<"), ("dectris2", "bslz4")])
def test_allow_missing_and_a_clean_dectris_stream_exit_zero(tmp_path, protocol, encoding):
    path, cube = _cube(tmp_path)
    server, port = _serve(str(path), "--as", protocol, "--encoding", encoding)
    done = subprocess.run(_live(f"{protocol}://127.0.0.1:{port}", tmp_path, "--allow-missing"), capture_output=True,
                          text=True, timeout=120)
    served, _ = server.communicate(timeout=60)
    assert "sent 48 messages for 48 frames" in served
    assert done.returncode == 0, done.stderr
    assert "received 48, missing 0" in done.stdout and "(complete)" in done.stdout
    with h5py.File(tmp_path / "a.h5") as f:
        assert np.array_equal(f[EMD_DATA_PATH][()], cube)
        assert json.loads(f[EMD_DATA_PATH].attrs[METADATA_ATTR])["frames"]["received"] == 48


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_writes_what_arrived_and_exits_130(tmp_path):
    path, _cube_data = _cube(tmp_path)
    server, port = _serve(str(path), "--as", "merlin", "--rate", "20")
    # the archive alone: its progress follows the stream block by block (reducers offloaded to workers report
    # theirs as their partials merge, later), so the first progress line comes while frames are still arriving
    live = subprocess.Popen(_live(f"merlin://127.0.0.1:{port}", tmp_path, reduce=False), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = live.stdout.readline()  # type: ignore[union-attr]  # the first progress line: frames are arriving
    assert first.startswith("live:"), first
    live.send_signal(signal.SIGINT)
    out, err = live.communicate(timeout=60)
    server.kill()
    server.communicate()
    assert live.returncode == 130, err
    assert "stopped by Ctrl-C" in out and "marked incomplete" in err
    with h5py.File(tmp_path / "a.h5") as f:
        received = f[EMD_DATA_PATH].parent["received"][()]
        assert 0 < received.sum() < 48
        assert json.loads(f[EMD_DATA_PATH].attrs[METADATA_ATTR])["frames"]["ended"] == "stopped by Ctrl-C"


@pytest.mark.parametrize("name", ["ev.h5", "ev.toml"])
def test_events_hold_the_received_frames_and_list_the_missing_positions(tmp_path, name):
    from stempress.data.open import open_source

    path, cube = _cube(tmp_path)
    server, port = _serve(str(path), "--as", "merlin", "--drop", "0.15", "--seed", "4")
    out = tmp_path / name
    done = subprocess.run(_live(f"merlin://127.0.0.1:{port}", tmp_path, "--events", str(out), "--allow-missing",
                                reduce=False), capture_output=True, text=True, timeout=120)
    server.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "a.h5") as f:
        received = f[EMD_DATA_PATH].parent["received"][()]
    assert 0 < received.sum() < received.size
    with open_source(out) as events:
        counts = events.read_rows(0, 6)
        frames = events.metadata["provenance"]["frames"]
    assert np.array_equal(counts[received], cube[received])  # the electrons of every frame that arrived
    assert not counts[~received].any()
    assert list(frames["missing_positions"]) == np.flatnonzero(~received).tolist()  # not empty frames, missing
    assert frames["missing"] == received.size - received.sum() and frames["expected"] == 48


def test_preview_draws_whole_pngs_with_missing_positions_shown(tmp_path):
    from matplotlib.image import imread

    path, _cube_data = _cube(tmp_path)
    server, port = _serve(str(path), "--as", "merlin", "--drop", "0.15", "--seed", "4", "--rate", "40")
    preview = tmp_path / "preview"
    done = subprocess.run(_live(f"merlin://127.0.0.1:{port}", tmp_path, "--reduce", "com", "--preview", str(preview),
                                "--allow-missing"), capture_output=True, text=True, timeout=120)
    server.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in preview.iterdir())
    assert names == ["bf_BF.png", "com_com_x.png", "com_com_y.png", "com_intensity.png", "mean_pattern_mean.png"]
    bf = imread(preview / "bf_BF.png")[..., :3]
    assert (np.abs(bf - [1.0, 0.0, 1.0]).sum(axis=-1) < 0.05).any()  # the missing positions, in magenta
    pattern = imread(preview / "mean_pattern_mean.png")[..., :3]
    assert not (np.abs(pattern - [1.0, 0.0, 1.0]).sum(axis=-1) < 0.05).any()  # a pattern has no missing pixels
    images, _record = read_reduced(tmp_path / "r.h5")
    assert "mean_pattern" in images  # the preview's mean pattern is reduced with the rest
    # a second run into the same folder refuses to draw over the first one's PNGs without --force
    again = subprocess.run(_live("merlin://127.0.0.1:1", tmp_path / "x", "--preview", str(preview)),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already holds PNGs" in again.stderr and "--force" in again.stderr


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".partial"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_scan_leaves_no_final_output_and_the_next_run_writes_them(tmp_path):
    path, cube = _cube(tmp_path)
    server, port = _serve(str(path), "--as", "merlin", "--rate", "10")
    outputs = ["--events", str(tmp_path / "ev.h5")]
    live = subprocess.Popen(_live(f"merlin://127.0.0.1:{port}", tmp_path, *outputs), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = live.stdout.readline()  # type: ignore[union-attr]  # frames are arriving: the outputs are open
    assert first.startswith("live:"), (first, live.stderr.read() if live.poll() is not None else "")
    live.kill()
    live.communicate(timeout=60)
    server.kill()
    server.communicate()
    assert live.returncode == -signal.SIGKILL
    finals = [tmp_path / name for name in ("a.h5", "r.h5", "ev.h5")]
    assert not any(p.exists() for p in finals)  # nothing a reader could take for a finished output
    left = _partials(tmp_path)  # only the temporary files of the killed run: the archive's, the events' staging
    assert any(n.startswith(".a.h5.") for n in left) and any(n.startswith(".ev.h5.") for n in left), left
    server, port = _serve(str(path), "--as", "merlin")
    done = subprocess.run(_live(f"merlin://127.0.0.1:{port}", tmp_path, *outputs), capture_output=True, text=True,
                          timeout=120)
    server.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(p.exists() for p in finals) and _partials(tmp_path) == []  # the dead run's leftovers cleared
    assert "that was killed" in done.stderr  # and it says so
    with h5py.File(tmp_path / "a.h5") as f:
        assert np.array_equal(f[EMD_DATA_PATH][()], cube)


def test_reduce_without_a_reduced_file_needs_a_preview(tmp_path):
    args = [sys.executable, "-m", "stempress", "live", "merlin://127.0.0.1:1", "--scan-shape", "6x8", "--reduce", "bf",
            "--centre", "5.5,4.5", "--bf-radius", "3"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--reduced RED.h5 go together" in done.stderr and "--preview" in done.stderr
    done = subprocess.run([*args[:9], "--preview", str(tmp_path / "p")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--centre ROW,COL and --bf-radius" in done.stderr  # images need the geometry
