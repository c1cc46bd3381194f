"""Live acquisition: receivers (Merlin TCP, DECTRIS ZeroMQ stream v1 and v2) fed by hand-made senders and by
``serve``, their frame accounting, and their blocks through the engine's sinks. Loopback ports are taken free
at run time."""

from __future__ import annotations

import json
import socket
import threading
import time

import h5py
import numpy as np
import pytest

from real_data import real_file
from stempress.data.base import ArraySource, Block
from stempress.data.calibration import Calibration
from stempress.data.emd import EMD_DATA_PATH, METADATA_ATTR
from stempress.data.mib import encode_frame
from stempress.data.open import open_source
from stempress.errors import StempressError
from stempress.ingest import ingest
from stempress.live import LiveSource
from stempress.live.dectris import decode_image, encode_image
from stempress.live.merlin import acquisition_header, mpx_message
from stempress.live.serve import FaultLog, Faults, _send_parts, due_sends, serve
from stempress.reduce.output import read_reduced
from stempress.store.compress import compress
from stempress.store.reduced import reduce_to_file


def _merlin_sender(messages: list[bytes]) -> int:
    """A one-connection TCP server sending ``messages`` then closing; returns its port."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def send() -> None:
        conn, _ = server.accept()
        with conn:
            for m in messages:
                conn.sendall(m)
        server.close()

    threading.Thread(target=send, daemon=True).start()
    return port


def test_merlin_receiver_marks_a_missing_frame_invalid_and_counts_it():
    frames = np.random.default_rng(0).integers(0, 4000, (3, 4, 8, 8)).astype(np.uint16)
    flat = frames.reshape(12, 8, 8)
    messages = [mpx_message(acquisition_header(12, 4, 12))]
    messages += [mpx_message(encode_frame(i + 1, flat[i])) for i in range(12) if i != 5]
    source = LiveSource(f"merlin://127.0.0.1:{_merlin_sender(messages)}", (3, 4), timeout=5)
    assert source.shape == (3, 4, 8, 8) and source.dtype == np.uint16
    deadline = time.monotonic() + 10
    while source.pumped < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.pumped == 11  # read from the moment it opened (TCP would block the sender while sinks open)
    blocks = list(source.blocks())
    assert [b.start for b in blocks] == [0, 1, 2]
    assert blocks[1].valid is not None and blocks[1].valid.tolist() == [[True, False, True, True]]
    assert blocks[0].valid is None and blocks[0].frame_ids.tolist() == [[1, 2, 3, 4]]
    data = np.concatenate([b.data for b in blocks])
    mask = source.received_mask
    assert np.array_equal(data[mask], frames[mask]) and not data[1, 1].any()  # the fill value, marked invalid
    a = source.account
    assert (a.expected, a.received, a.missing, a.duplicate, a.corrupt) == (12, 11, 1, 0, 0)
    assert "closed the connection" in a.ended


def test_merlin_receiver_refuses_a_stream_that_is_not_merlin():
    port = _merlin_sender([b"HTTP/1.1 200 OK\r\n\r\nhello there"])
    with pytest.raises(StempressError, match="MPX framing"):
        LiveSource(f"merlin://127.0.0.1:{port}", (1, 1), timeout=5)


def test_bad_url_is_one_line():
    with pytest.raises(StempressError, match="merlin://HOST:PORT"):
        LiveSource("http://localhost:1", (1, 1))


@pytest.mark.parametrize("encoding", ["bs16-lz4<", "lz4<", "<"])
def test_dectris_encodings_round_trip(encoding):
    frame = np.random.default_rng(1).poisson(0.3, (96, 80)).astype(np.uint16)
    blob = encode_image(frame, encoding)
    assert np.array_equal(decode_image(blob, frame.shape, frame.dtype, encoding), frame)


def test_dectris_bitshuffle_32_bit_round_trip_and_corrupt_data_refused():
    frame = np.random.default_rng(2).poisson(2.0, (16, 24)).astype(np.uint32)
    blob = encode_image(frame, "bs32-lz4<")
    assert np.array_equal(decode_image(blob, frame.shape, frame.dtype, "bs32-lz4<"), frame)
    with pytest.raises(StempressError, match="corrupt"):
        decode_image(blob[:20], frame.shape, frame.dtype, "bs32-lz4<")


# -- the simulator and the receiver's accounting -------------------------------------------------------------


def _cube(shape=(6, 8, 12, 10), seed=3) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, shape).astype(np.uint16)


def _serve_in_thread(source, protocol: str, faults: Faults | None = None, **options) -> tuple[int, dict]:
    """``serve`` on a free loopback port in a thread; returns the port once listening and a dict that will hold
    its ``FaultLog`` (or its error)."""
    ready = threading.Event()
    port: list[int] = []
    out: dict = {}

    def run() -> None:
        try:
            out["log"] = serve(source, protocol, faults=faults, ready=lambda p: (port.append(p), ready.set()),
                               timeout=10, **options)
        except Exception as exc:
            out["error"] = exc
            ready.set()

    out["thread"] = thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30) and port, out.get("error")
    return port[0], out


def _receive(protocol: str, port: int, scan_shape, **options) -> tuple[LiveSource, list]:
    source = LiveSource(f"{protocol}://127.0.0.1:{port}", scan_shape, **options)
    return source, list(source.blocks())


@pytest.mark.parametrize("protocol", ["merlin", "dectris", "dectris2"])
def test_clean_stream_gives_the_source_frames(protocol):
    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), protocol)
    live, blocks = _receive(protocol, port, cube.shape[:2], timeout=10)
    out["thread"].join(30)
    assert np.array_equal(np.concatenate([b.data for b in blocks]), cube)
    assert all(b.valid is None for b in blocks)
    a = live.account
    assert (a.received, a.missing, a.duplicate, a.late, a.reordered, a.corrupt, a.ended) == (48, 0, 0, 0, 0, 0,
                                                                                             "complete")


@pytest.mark.parametrize("protocol", ["merlin", "dectris", "dectris2"])
@pytest.mark.parametrize("kind", ["drop", "duplicate", "reorder", "corrupt"])
def test_each_injected_fault_is_counted_exactly(protocol, kind):
    cube = _cube()
    faults = Faults(**{kind: 0.2}, seed=11)
    port, out = _serve_in_thread(open_source(cube), protocol, faults)
    live, blocks = _receive(protocol, port, cube.shape[:2], timeout=10)
    out["thread"].join(30)
    log: FaultLog = out["log"]
    hits = {"drop": log.dropped, "duplicate": log.duplicated, "reorder": log.reordered, "corrupt": log.corrupted}
    assert len(hits[kind]) >= 3 and all(not v for k, v in hits.items() if k != kind)  # the seed injects some
    a = live.account
    lost = set(log.dropped) | set(log.corrupted)
    assert (a.missing, a.duplicate, a.reordered, a.corrupt, a.late) == (
        len(lost), len(log.duplicated), len(log.reordered), len(log.corrupted), 0)
    mask = live.received_mask.ravel()
    assert sorted(np.flatnonzero(~mask)) == sorted(lost)
    data = np.concatenate([b.data for b in blocks]).reshape(48, 12, 10)
    assert np.array_equal(data[mask], cube.reshape(48, 12, 10)[mask])  # what arrived is exact
    assert not data[~mask].any()  # the fill value, marked in valid, never posing as data
    valid = np.concatenate([np.ones((1, 8), bool) if b.valid is None else b.valid for b in blocks]).ravel()
    assert np.array_equal(valid, mask)


@pytest.mark.parametrize("protocol", ["merlin", "dectris", "dectris2"])
def test_disconnect_ends_the_stream_with_what_arrived(protocol):
    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), protocol, Faults(disconnect_after=20))
    live, blocks = _receive(protocol, port, cube.shape[:2], timeout=1)
    out["thread"].join(30)
    assert live.account.received == 20 and live.account.missing == 28
    assert ("closed the connection" if protocol == "merlin" else "no data for 1 s") in live.account.ended
    assert sum(b.data.shape[0] for b in blocks) == 6  # every row handed on, the late ones marked invalid
    assert live.received_mask.ravel().tolist() == [True] * 20 + [False] * 28


def test_stall_longer_than_the_timeout_ends_the_stream():
    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin", Faults(stall=2.0, stall_at=10))
    live, _blocks = _receive("merlin", port, cube.shape[:2], timeout=0.5)
    out["thread"].join(30)
    assert live.account.received == 10 and "stalled" in live.account.ended
    assert "went away" in out["log"].ended  # the simulator saw the receiver leave instead of hanging


@pytest.mark.parametrize("name", ["001_4x2_6bit.mib", "002_4x2_6bit_roi128.mib"])
def test_merlin_simulator_sends_a_real_mib_file_byte_for_byte(name):
    path = real_file(name)
    source = open_source(path)
    port, out = _serve_in_thread(source, "merlin")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        received = b""
        while chunk := conn.recv(1 << 16):
            received += chunk
    out["thread"].join(30)
    raw = path.read_bytes()
    record = len(raw) // 8
    expected = mpx_message(path.with_suffix(".hdr").read_bytes())
    expected += b"".join(mpx_message(raw[i * record:(i + 1) * record]) for i in range(8))
    assert received == expected


def test_merlin_receiver_reads_a_real_mib_stream_as_the_file_source_reads_it():
    source = open_source(real_file("001_4x2_6bit.mib"))
    port, out = _serve_in_thread(source, "merlin")
    live, blocks = _receive("merlin", port, source.shape[:2], timeout=10)
    out["thread"].join(30)
    assert np.array_equal(np.concatenate([b.data for b in blocks]), source.read_rows(0, source.shape[0]))
    assert live.metadata["hdr"]["Counter Depth (number)"] == "6" and live.metadata["det_y_flipped"] is True
    assert live.account.ended == "complete"


# -- through the engine's sinks ------------------------------------------------------------------------------
def _chunks(path) -> dict:
    with h5py.File(path, "r") as f:
        dset = f[EMD_DATA_PATH]
        return {info.chunk_offset: dset.id.read_direct_chunk(info.chunk_offset)[1]
                for info in (dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks()))}


CAL = Calibration(5.5, 4.5, 3.0, det_shape=(12, 10))


@pytest.mark.parametrize("protocol", ["merlin", "dectris"])
def test_clean_stream_archive_and_reduced_equal_compress_and_reduce(tmp_path, protocol):
    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), protocol)
    live = LiveSource(f"{protocol}://127.0.0.1:{port}", cube.shape[:2], timeout=10)
    report = ingest(live, archive=tmp_path / "a.h5", reduce=["bf", "com"], reduced=tmp_path / "r.h5",
                    calibration=CAL, workers=2, chunks="2x4x12x10")
    out["thread"].join(30)
    compress(ArraySource(cube, name="cube"), tmp_path / "c.h5", chunks="2x4x12x10", workers=2)
    assert _chunks(tmp_path / "a.h5") == _chunks(tmp_path / "c.h5")  # chunk for chunk, byte for byte
    reduce_to_file(ArraySource(cube, name="cube"), ["bf", "com"], tmp_path / "s.h5", calibration=CAL)
    (one, _), (separate, _) = read_reduced(tmp_path / "r.h5"), read_reduced(tmp_path / "s.h5")
    for target in separate:
        for key in separate[target]:
            np.testing.assert_array_equal(one[target][key], separate[target][key])
    with h5py.File(tmp_path / "a.h5") as f:
        assert f[EMD_DATA_PATH].parent["received"][()].all() and f[EMD_DATA_PATH].attrs["frames_missing"] == 0
        assert json.loads(f[EMD_DATA_PATH].attrs[METADATA_ATTR])["frames"]["ended"] == "complete"
    assert report.bytes_read == cube.nbytes


def test_missing_frames_are_nan_in_reduced_images_and_masked_in_the_archive(tmp_path):
    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin", Faults(drop=0.1, seed=5))
    live = LiveSource(f"merlin://127.0.0.1:{port}", cube.shape[:2], timeout=10)
    ingest(live, archive=tmp_path / "a.h5", reduce=["bf"], reduced=tmp_path / "r.h5", calibration=CAL,
           chunks="2x4x12x10")
    out["thread"].join(30)
    lost = out["log"].dropped
    assert lost
    missing = np.zeros(48, bool)
    missing[lost] = True
    missing = missing.reshape(6, 8)
    reduce_to_file(ArraySource(cube, name="cube"), ["bf"], tmp_path / "s.h5", calibration=CAL)
    (one, record), (full, _) = read_reduced(tmp_path / "r.h5"), read_reduced(tmp_path / "s.h5")
    for key, image in one["bf"].items():
        if image.shape[:2] == (6, 8):
            assert np.isnan(image[missing]).all()
            np.testing.assert_array_equal(image[~missing], full["bf"][key][~missing])
    assert record["frames"]["missing"] == len(lost)
    with h5py.File(tmp_path / "r.h5") as f:
        assert np.array_equal(f["received"][()], ~missing)
    with h5py.File(tmp_path / "a.h5") as f:
        data = f[EMD_DATA_PATH]
        assert np.array_equal(data.parent["received"][()], ~missing) and data.attrs["frames_missing"] == len(lost)
        stored = data[()]
    assert not stored[missing].any() and np.array_equal(stored[~missing], cube[~missing])  # fill value, masked


def test_reducer_partitions_merge_their_missing_positions():
    from stempress.reduce.sufficiency import parse_targets
    from stempress.sinks.protocol import RunInfo
    from stempress.sinks.reduce import ReducerSink

    cube = _cube()
    reducers = [t.reducer(CAL, name=t.label) for t in parse_targets(["bf"])]
    whole = ReducerSink(reducers, CAL)
    info = RunInfo("cube", cube.shape, cube.dtype)
    whole.open(info)
    valid = np.ones((6, 8), bool)
    valid[4, 3] = False
    for rows in ((0, 3), (3, 6)):
        part = whole.partial(rows)
        part.open(info.for_rows(*rows))
        for r in range(*rows):
            part.consume(Block(r, cube[r:r + 1], None if valid[r].all() else valid[r:r + 1]))
        whole.merge(part)
    image = next(iter(whole.finish()["bf"].values()))
    assert np.isnan(image[4, 3]) and np.isfinite(np.delete(image.ravel(), 4 * 8 + 3)).all()


def test_assembler_hands_rows_on_in_order_and_counts_a_late_frame():
    from stempress.live.accounting import FrameAccount, RowAssembler

    account = FrameAccount(12)
    rows = RowAssembler((3, 4), (2, 2), np.dtype(np.uint16), account, window_rows=1)
    frame = np.ones((2, 2), np.uint16)
    out = [b.start for i in (0, 1, 3) for b in rows.add(i, i + 1, frame)]
    assert out == []  # row 0 waits for frame 2 while the stream is still in it
    out += [b.start for i in (4, 5, 6, 7) for b in rows.add(i, i + 1, frame)]
    assert out == []  # row 1 is complete, but row 0 (one row behind) is still inside the window
    emitted = rows.add(8, 9, frame)  # the stream is two rows on: row 0 goes without frame 2, then row 1
    assert [b.start for b in emitted] == [0, 1] and emitted[0].valid.tolist() == [[True, True, False, True]]
    assert rows.add(2, 3, frame) == [] and account.late == 1 and account.reordered == 0
    assert rows.add(8, 9, frame) == [] and account.duplicate == 1
    last = rows.flush()
    assert [b.start for b in last] == [2] and last[0].valid.tolist() == [[True, False, False, False]]
    assert (account.received, account.missing) == (8, 4)  # the late frame stays missing


@pytest.mark.parametrize("window", [0, 1, 2])
def test_a_run_of_frames_placed_at_once_is_accounted_as_one_by_one(window):
    """``add_run`` (a batch of consecutive frames) gives the rows, ids, valid masks and counts that ``add`` gives
    one frame at a time, on arrivals with reordered, duplicate, late and dropped frames in runs of any length."""
    from stempress.live.accounting import FrameAccount, RowAssembler

    rng = np.random.default_rng(window)
    # a 5x6 scan: a jump ahead, runs back below it (reordered), a duplicate run, 15 dropped, a jump to the last
    # row, then a run into row 3 (late unless the window still holds it) and the rest of it
    order = [0, 1, 2, 4, 5, 9, 10, 11, 6, 7, 8, 3, 12, 13, 14, 16, 17, 12, 13, 24, 25, 26, 27, 28, 29, 18, 19, 20,
             21, 22, 23]
    frames = np.arange(30 * 4, dtype=np.uint16).reshape(30, 2, 2)
    big_endian = frames.astype(">u2")[:, ::-1]  # views as the reader hands them on: the copy makes them native
    one, batched = (RowAssembler((5, 6), (2, 2), np.dtype(np.uint16), FrameAccount(30), window_rows=window)
                    for _ in range(2))
    expected = [b for i in order for b in one.add(i, i + 1, big_endian[i])]
    got, at = [], 0
    while at < len(order):  # runs as a reader cuts them: consecutive numbers, of any length
        n = 1
        while at + n < len(order) and order[at + n] == order[at + n - 1] + 1 and rng.random() < 0.8:
            n += 1
        run = order[at:at + n]
        placed = None
        if run == list(range(run[0], run[0] + len(run))):
            numbers = np.array(run) + 1
            placed = batched.add_run(run[0], numbers, big_endian[run[0]:run[-1] + 1])
        got += placed if placed is not None else [b for i in run for b in batched.add(i, i + 1, big_endian[i])]
        at += n
    expected += one.flush()
    got += batched.flush()
    assert one.account == batched.account and one.account.reordered and one.account.duplicate
    assert bool(one.account.late) == (window == 0)
    assert [b.start for b in got] == [b.start for b in expected] == list(range(5))
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a.data, b.data) and np.array_equal(a.frame_ids, b.frame_ids)
        assert (a.valid is None and b.valid is None) or np.array_equal(a.valid, b.valid)
    assert np.array_equal(np.concatenate([b.data for b in got])[batched.received.reshape(5, 6)],
                          frames[batched.received][:, ::-1])


def test_assembled_rows_join_without_a_copy_and_a_slab_is_reused_only_once_nothing_holds_it():
    from stempress.data.stream import join, regroup
    from stempress.live.accounting import FrameAccount, RowAssembler

    account = FrameAccount(6 * 3)
    rows = RowAssembler((6, 3), (2, 2), np.dtype(np.uint16), account, window_rows=0, slab_rows=2)
    frames = np.arange(18 * 4, dtype=np.uint16).reshape(6, 3, 2, 2)
    emitted = [b for i in range(18) for b in rows.add(i, i + 1, frames.reshape(18, 2, 2)[i])]
    first, second = emitted[:2], emitted[2:4]
    joined = join(first)
    assert np.shares_memory(joined.data, first[0].data) and np.array_equal(joined.data, frames[:2])
    assert joined.frame_ids.tolist() == [[1, 2, 3], [4, 5, 6]]
    apart = join([second[0], Block(3, second[1].data.copy())])  # not back to back in one buffer: a copy
    assert not np.shares_memory(apart.data, second[0].data) and np.array_equal(apart.data, frames[2:4])
    # both slabs are spare now, but the blocks above still view them: neither may be written again
    assert len(rows._spare) == 2 and rows._unused((2, 3, 2, 2)) is None
    held = id(second[0].data.base)
    del emitted, first, joined
    at = rows._unused((2, 3, 2, 2))  # the last slab is free; the one of rows 2-3 is still viewed by second
    assert at is not None and id(rows._spare[at]) != held
    del second
    assert rows._unused((2, 3, 2, 2)) is not None
    rows2 = RowAssembler((4, 3), (2, 2), np.dtype(np.uint16), FrameAccount(12), window_rows=0, slab_rows=2)
    blocks = list(regroup((b for i in range(12) for b in rows2.add(i, i + 1, frames.reshape(18, 2, 2)[i])), 2, 4))
    assert [b.start for b in blocks] == [0, 2] and np.array_equal(np.concatenate([b.data for b in blocks]), frames[:4])


# -- snapshots while the scan fills ----------------------------------------------------------------------------
@pytest.mark.parametrize("every, expected", [(3600.0, 2), (0.0, 6 + 1)])
def test_snapshots_are_taken_at_most_every_so_often_and_once_at_the_end(every, expected):
    from stempress.acquire import receive
    from stempress.reduce.imaging import default_reducers

    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin")
    live = LiveSource(f"merlin://127.0.0.1:{port}", cube.shape[:2], timeout=10)
    seen: list = []
    receive(live, reducers=default_reducers(CAL), watch=seen.append, every=every)
    out["thread"].join(30)
    assert len(seen) == expected  # the first block's, then none sooner than `every`; the final one always
    assert [s.final for s in seen] == [False] * (expected - 1) + [True]
    assert seen[0].rows_done <= 1 and seen[-1].rows_done == 6 and seen[-1].received.all()
    assert np.isnan(seen[0].image("BF")[1:]).all()  # rows not reduced yet are NaN, not zeros
    full = run_reducers_of(cube)
    np.testing.assert_array_equal(seen[-1].image("BF"), full["virtual"]["BF"])


def test_snapshots_fill_row_by_row_while_the_archive_takes_whole_chunk_rows(tmp_path):
    """With an archive of 4-row chunks, snapshot k still holds exactly the k + 1 rows received so far (not a
    multiple of 4), and the archive is byte for byte the one compress writes."""
    from stempress.acquire import receive
    from stempress.reduce.imaging import default_reducers

    cube = _cube((10, 8, 12, 10))
    port, out = _serve_in_thread(open_source(cube), "merlin")
    live = LiveSource(f"merlin://127.0.0.1:{port}", cube.shape[:2], timeout=10)
    seen: list = []
    receive(live, reducers=default_reducers(CAL), watch=seen.append, every=0.0, archive=tmp_path / "a.h5",
            chunks="4x4x12x10", workers=1)
    out["thread"].join(30)
    assert [s.rows_done for s in seen] == [*range(1, 11), 10] and seen[-1].final
    for k, snapshot in enumerate(seen[:-1]):
        bf = snapshot.image("BF")
        assert int(snapshot.received.sum()) == 8 * (k + 1) and snapshot.received[:k + 1].all()
        assert np.isfinite(bf[:k + 1]).all() and np.isnan(bf[k + 1:]).all()
    np.testing.assert_array_equal(seen[-1].image("BF"), run_reducers_of(cube)["virtual"]["BF"])
    compress(ArraySource(cube, name="cube"), tmp_path / "c.h5", chunks="4x4x12x10", workers=1)
    assert _chunks(tmp_path / "a.h5") == _chunks(tmp_path / "c.h5")


def run_reducers_of(cube: np.ndarray) -> dict:
    from stempress.reduce.imaging import default_reducers
    from stempress.store.reducing import run_reducers

    return run_reducers(cube, default_reducers(CAL))


def test_live_scan_yields_the_scan_as_it_fills_and_ends_with_the_full_result(tmp_path):
    from stempress.acquire import live_scan

    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin", Faults(drop=0.1, seed=5), rate=60)
    scan = live_scan(f"merlin://127.0.0.1:{port}", cube.shape[:2], centre=(5.5, 4.5), bf_radius=3.0,
                     every=0.2, archive=tmp_path / "a.h5", chunks="2x4x12x10")
    snapshots = list(scan)
    out["thread"].join(30)
    lost = out["log"].dropped
    assert lost and len(snapshots) >= 2 and snapshots[-1].final and not any(s.final for s in snapshots[:-1])
    counts = [int(s.received.sum()) for s in snapshots]
    assert counts == sorted(counts) and counts[-1] == 48 - len(lost)  # the scan fills, snapshot by snapshot
    missing = np.zeros(48, bool)
    missing[lost] = True
    missing = missing.reshape(6, 8)
    last = snapshots[-1]
    assert np.array_equal(last.received, ~missing) and last.frames["missing"] == len(lost)
    full = run_reducers_of(cube)
    bf = last.image("BF")
    assert np.isnan(bf[missing]).all() and np.array_equal(bf[~missing], full["virtual"]["BF"][~missing])
    assert scan.report is not None and scan.report.archive is not None
    with h5py.File(tmp_path / "a.h5") as f:
        assert np.array_equal(f[EMD_DATA_PATH].parent["received"][()], ~missing)


def test_leaving_the_live_scan_loop_early_stops_the_scan_with_what_arrived(tmp_path):
    from stempress.acquire import live_scan

    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin", rate=20)
    scan = live_scan(f"merlin://127.0.0.1:{port}", cube.shape[:2], every=0.0, archive=tmp_path / "a.h5",
                     chunks="2x4x12x10")
    for snapshot in scan:
        assert snapshot.images == {}  # no calibration given: the received mask and the accounting only
        break
    out["thread"].join(30)
    assert scan.source.account.ended == "stopped by the caller" and scan.source.account.missing > 0
    with h5py.File(tmp_path / "a.h5") as f:  # the outputs hold what arrived, marked
        assert 0 < f[EMD_DATA_PATH].parent["received"][()].sum() < 48


@pytest.mark.parametrize("fill", [0, 7])
def test_the_mean_pattern_is_the_mean_of_the_received_frames_only(tmp_path, fill):
    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin", Faults(drop=0.2, seed=5))
    live = LiveSource(f"merlin://127.0.0.1:{port}", cube.shape[:2], timeout=10, fill=fill)
    ingest(live, reduce=["mean_pattern", "bf"], reduced=tmp_path / "r.h5", calibration=CAL, workers=2,
           archive=tmp_path / "a.h5", chunks="2x4x12x10")
    out["thread"].join(30)
    received = live.received_mask
    assert 0 < received.sum() < 48
    with h5py.File(tmp_path / "a.h5") as f:
        stored = f[EMD_DATA_PATH][()]
    assert (stored[~received] == fill).all() and np.array_equal(stored[received], cube[received])  # the fill, kept
    images, _record = read_reduced(tmp_path / "r.h5")
    mean = images["mean_pattern"]["mean"]
    np.testing.assert_allclose(mean, cube[received].mean(axis=0), rtol=1e-12)  # not the fill, not over all 48
    bf = next(iter(images["bf"].values()))
    full = run_reducers_of(cube)["virtual"]["BF"]
    assert np.isnan(bf[~received]).all() and np.array_equal(bf[received], full[received])


def test_reduce_targets_without_a_file_are_reduced_in_memory_for_the_snapshots(tmp_path):
    from stempress.acquire import receive

    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "dectris")
    live = LiveSource(f"dectris://127.0.0.1:{port}", cube.shape[:2], timeout=10)
    seen: list = []
    report = receive(live, reduce=["bf"], calibration=CAL, watch=seen.append, archive=tmp_path / "a.h5")
    out["thread"].join(30)
    assert report.reduced is None and sorted(seen[-1].images) == ["bf", "mean_pattern"]  # the preview's pattern
    with pytest.raises(StempressError, match="only seen by a watcher"):
        receive(live, reduce=["bf"], calibration=CAL, archive=tmp_path / "b.h5")  # nobody would see the images
    np.testing.assert_allclose(seen[-1].image("mean"), cube.reshape(48, 12, 10).mean(axis=0), rtol=1e-12)
    assert np.array_equal(seen[-1].image("bf/BF"), run_reducers_of(cube)["virtual"]["BF"])


def test_lag_counts_frames_off_the_network_not_yet_through_the_sinks():
    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin", Faults(drop=0.1, duplicate=0.1, seed=11))
    live, _blocks = _receive("merlin", port, cube.shape[:2], timeout=10)
    out["thread"].join(30)
    arrived = 48 - len(out["log"].dropped)
    assert out["log"].duplicated and live.pumped == arrived + len(out["log"].duplicated)
    assert live.account.received == arrived
    row = 8 * live.frame_bytes
    assert live.lag(0) == arrived  # nothing through the sinks yet: every frame that arrived is behind
    assert live.lag(6 * row) == 0  # every row through: none, the missing frames are not lag
    done_two_rows = 2 * 8 - int((~live.received_mask[:2]).sum())
    assert live.lag(2 * row) == arrived - done_two_rows
    assert "lag 0 frames" in live.status(6 * row) and "missing so far" in live.status()


def test_live_scan_hands_a_refusal_to_the_loop(tmp_path):
    from stempress.acquire import live_scan

    cube = _cube()
    (tmp_path / "a.h5").write_bytes(b"mine")
    port, out = _serve_in_thread(open_source(cube), "merlin")
    scan = live_scan(f"merlin://127.0.0.1:{port}", cube.shape[:2], archive=tmp_path / "a.h5")
    with pytest.raises(StempressError, match="already exists"):
        list(scan)
    out["thread"].join(30)
    assert not out["thread"].is_alive() and (tmp_path / "a.h5").read_bytes() == b"mine"


def test_a_missing_frames_fill_value_is_never_counted_as_electrons(tmp_path):
    from stempress.events.counting import CountingParams

    cube = _cube()
    port, out = _serve_in_thread(open_source(cube), "merlin", Faults(drop=0.2, seed=5))
    live = LiveSource(f"merlin://127.0.0.1:{port}", cube.shape[:2], timeout=10, fill=50)
    report = ingest(live, events=tmp_path / "ev.h5", counting=CountingParams(dark=0.0, gain=1.0, threshold=20.0))
    out["thread"].join(30)
    received = live.received_mask
    assert 0 < received.sum() < 48
    with open_source(tmp_path / "ev.h5") as events:
        counts = events.read_rows(0, 6)
    assert not counts[~received].any()  # a fill of 50 ADU above a threshold of 20 would have been electrons
    assert report.events is not None and report.events.n_electrons == int(counts.sum())


def test_a_dectris_stream_of_only_invalid_images_says_so_and_what_was_wrong():
    """A sender that is not a real detector (e.g. a mock without frame numbers and hashes): every image is refused,
    and the error counts them and names the first problem instead of saying that nothing arrived."""
    import zmq

    from stempress.live.dectris import DectrisReader, end_parts, header_parts

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = DectrisReader("127.0.0.1", port, timeout=5)
    try:
        push.send_multipart(header_parts(1, {}))
        for _ in range(2):
            push.send_multipart([json.dumps({"htype": "dimage-1.0", "series": 1}).encode(), b"{}", b"\0" * 8, b"{}"])
        push.send_multipart(end_parts(1))
        with pytest.raises(StempressError, match=r"2 image\(s\) arrived before the series end, none valid "
                                                 r"\(the first: "):
            reader.start()
    finally:
        reader.close()
        push.close()
        context.term()


def _one_bit_messages(frames: np.ndarray, raw: bool) -> list[bytes]:
    flat = frames.reshape(-1, *frames.shape[2:])
    return [mpx_message(acquisition_header(len(flat), frames.shape[1], 1)),
            *(mpx_message(encode_frame(i + 1, f, counter_depth=1, raw=raw)) for i, f in enumerate(flat))]


@pytest.mark.parametrize(("raw", "codec", "stored"), [(False, None, "blosc_lz4_bitshuffle"),
                                                       (True, None, "blosc_lz4_bitshuffle"),
                                                       (False, "blosc_zstd", "blosc_zstd")])
def test_a_1bit_stream_is_archived_bitshuffled_unless_the_user_names_a_codec(tmp_path, raw, codec, stored):
    from stempress.acquire import receive
    from stempress.codecs.blosc import CNAME_CODES, SHUFFLE_MODES

    frames = (np.random.default_rng(2).random((2, 4, 256, 256)) < 0.08).astype(np.uint8)
    live = LiveSource(f"merlin://127.0.0.1:{_merlin_sender(_one_bit_messages(frames, raw))}", (2, 4), timeout=10)
    assert live.metadata["counter_depth"] == 1 and live.dtype == np.uint8
    report = receive(live, archive=tmp_path / "a.h5", codec=codec)
    assert report.archive is not None and report.archive.codec.name == stored and report.archive.direct
    with h5py.File(tmp_path / "a.h5") as f:
        dset = f[EMD_DATA_PATH]
        assert np.array_equal(dset[()], frames)  # the 0/1 counts, losslessly
        cd_values = dset.id.get_create_plist().get_filter(0)[2]
        assert (cd_values[5], cd_values[6]) == ((SHUFFLE_MODES["bit"], CNAME_CODES["lz4"]) if codec is None else
                                                (SHUFFLE_MODES["byte"], CNAME_CODES["zstd"]))
        said = json.loads(dset.attrs[METADATA_ATTR]).get("archive_codec_default", "")
    assert ("blosc_lz4_bitshuffle: the default for 1-bit streams" in said) == (codec is None)


def test_a_12bit_stream_keeps_the_usual_default_codec(tmp_path):
    from stempress.acquire import receive

    frames = np.random.default_rng(3).integers(0, 4096, (2, 3, 8, 8)).astype(np.uint16)
    flat = frames.reshape(6, 8, 8)
    messages = [mpx_message(acquisition_header(6, 3, 12)), *(mpx_message(encode_frame(i + 1, f))
                                                              for i, f in enumerate(flat))]
    live = LiveSource(f"merlin://127.0.0.1:{_merlin_sender(messages)}", (2, 3), timeout=10)
    report = receive(live, archive=tmp_path / "a.h5")
    assert live.metadata["counter_depth"] == 12 and report.archive.codec.name == "blosc_zstd"
    assert "archive_codec_default" not in live.metadata


def test_raw_frames_decode_by_the_first_header_unless_their_counter_depth_changes():
    frames = (np.random.default_rng(4).random((1, 3, 256, 256)) < 0.1).astype(np.uint8)
    messages = _one_bit_messages(frames, raw=True)
    frames[0, 1] *= 37  # frame 2 comes at counter depth 6 (another length), which the first header cannot decode
    messages[2] = mpx_message(encode_frame(2, frames[0, 1], counter_depth=6, raw=True))
    live, blocks = _receive("merlin", _merlin_sender(messages), (1, 3), timeout=10)
    assert np.array_equal(np.concatenate([b.data for b in blocks]), frames)
    assert (live.account.received, live.account.corrupt) == (3, 0)


def test_frames_whose_numbers_grow_a_digit_and_a_short_last_frame_are_read_as_one_by_one():
    """The bulk reader matches frames by the first one's header layout: numbers written without zero padding
    (9 -> 10 changes the layout) still arrive in order, and a short frame at the end of the stream is corrupt, not
    swallowed by the connection closing."""
    frames = np.random.default_rng(5).integers(0, 4000, (3, 4, 6, 5)).astype(np.uint16)
    flat = frames.reshape(12, 6, 5)

    def unpadded(i: int) -> bytes:
        record = bytes(encode_frame(i + 1, flat[i]))
        head = record[:384].replace(b"MQ1,%06d," % (i + 1), b"MQ1,%d," % (i + 1), 1).ljust(384, b"\0")
        return head + record[384:]

    messages = [mpx_message(acquisition_header(12, 4, 12)), *(mpx_message(unpadded(i)) for i in range(11)),
                mpx_message(unpadded(11)[:-16])]
    live, blocks = _receive("merlin", _merlin_sender(messages), (3, 4), timeout=10)
    a = live.account
    assert (a.received, a.corrupt, a.missing, a.duplicate, a.reordered) == (11, 1, 1, 0, 0)
    assert "closed" in a.ended
    data = np.concatenate([b.data for b in blocks]).reshape(12, 6, 5)
    assert np.array_equal(data[:11], flat[:11]) and not data[11].any()


def test_a_group_cut_short_counts_the_messages_the_kernel_took_whole():
    """A grouped send that fails (the receiver stops reading: a timeout) says how many of its messages went out
    whole, so serve's log counts exactly what was sent, not the group before it."""
    import socket

    sender, receiver = socket.socketpair()
    with sender, receiver:
        sender.settimeout(0.2)
        prefix, record = b"P" * 15, bytes(64 * 1024)  # two parts a message, as Merlin's MPX prefix and record
        parts = [prefix, record] * 64
        with pytest.raises(TimeoutError) as caught:
            _send_parts(sender, parts, list(range(2, len(parts) + 1, 2)))
        sender.shutdown(socket.SHUT_WR)
        got = 0
        while chunk := receiver.recv(1 << 20):
            got += len(chunk)
    whole = caught.value.messages_sent  # type: ignore[attr-defined]
    assert 0 < whole < 64
    assert whole * (15 + 64 * 1024) <= got < (whole + 1) * (15 + 64 * 1024)


def test_serve_groups_only_the_sends_already_due():
    """A Merlin sender hands the kernel every frame due by now in one call; none goes before its time."""
    assert due_sends(0, 32, 10.0, 1000.0, 10.0105) == 11  # sends 0..10 are due by 10.5 ms, 11 at 11 ms is not
    assert due_sends(5, 32, 10.0, 1000.0, 10.0) == 6  # behind nothing: just the one whose time has come
    assert due_sends(0, 8, 10.0, 1000.0, 99.0) == 8  # far behind: at most the group
    assert due_sends(3, 35, 10.0, 0.0, 10.0) == 35  # as fast as it goes: the whole group
