"""DECTRIS Stream V2 (CBOR over ZeroMQ): ``serve --as dectris2`` to ``LiveSource("dectris2://...")`` on loopback,
bit-exact for each encoding and image dtype; its framing read by HDF5's own filters; messages that are not Stream
V2 refused in one line. The faults' accounting runs with the other protocols' in ``test_live.py``."""

from __future__ import annotations

import threading

import h5py
import hdf5plugin
import numpy as np
import pytest
from test_live import _serve_in_thread

from stempress.data.base import ArraySource
from stempress.errors import StempressError
from stempress.live import LiveSource, dectris2
from stempress.live.dectris import header_parts
from stempress.live.serve import Faults, serve


def _scan(dtype: str, seed: int = 0) -> np.ndarray:
    """An 8x8 scan of 32x32 frames using the dtype's whole range (high bits set: a byte-order slip shows)."""
    rng = np.random.default_rng(seed)
    cube = rng.poisson(2.0, (8, 8, 32, 32)).astype(dtype)
    cube[..., 0, :4] = np.iinfo(dtype).max - np.arange(4, dtype=dtype)
    return cube


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("encoding", ["none", "lz4", "bslz4"])
def test_clean_stream_v2_is_received_bit_exact(encoding, dtype):
    cube = _scan(dtype)
    port, out = _serve_in_thread(ArraySource(cube, name="scan"), "dectris2", encoding=encoding)
    live = LiveSource(f"dectris2://127.0.0.1:{port}", (8, 8), timeout=10)
    blocks = list(live.blocks())
    out["thread"].join(30)
    data = np.concatenate([b.data for b in blocks])
    assert data.dtype == np.dtype(dtype) and np.array_equal(data, cube)
    assert [int(b.frame_ids[0, 0]) for b in blocks] == list(range(0, 64, 8))  # image_id from 0
    a = live.account
    assert (a.received, a.missing, a.duplicate, a.reordered, a.corrupt, a.ended) == (64, 0, 0, 0, 0, "complete")
    assert live.metadata["format"] == "dectris-stream-v2" and live.metadata["channel"] == dectris2.DEFAULT_CHANNEL
    assert live.metadata["detector_config"]["image_dtype"] == dtype  # the start message's fields, as JSON


def test_a_stall_longer_than_the_timeout_ends_the_stream_with_what_arrived():
    ready, out = threading.Event(), {}

    def run() -> None:  # a short send timeout: the simulator gives up on the receiver that left
        out["log"] = serve(ArraySource(_scan("uint16"), name="scan"), "dectris2", faults=Faults(stall=1.5, stall_at=10),
                           timeout=3, ready=lambda p: (out.setdefault("port", p), ready.set()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    live = LiveSource(f"dectris2://127.0.0.1:{out['port']}", (8, 8), timeout=0.5)
    blocks = list(live.blocks())
    thread.join(30)
    assert live.account.received == 10 and live.account.missing == 54 and "stalled" in live.account.ended
    assert sum(b.data.shape[0] for b in blocks) == 8 and live.received_mask.ravel().sum() == 10
    assert "went away" in out["log"].ended


@pytest.mark.parametrize("algorithm", ["bslz4", "lz4"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_compressed_data_is_framed_as_the_hdf5_filters_read_it(tmp_path, algorithm, dtype):
    """Tag 56500's bytes are the bitshuffle / LZ4 HDF5 filters' chunks: HDF5 itself (hdf5plugin) decodes what
    serve sends, so a real detector's data decodes here too."""
    frame = _scan(dtype, seed=1)[2, 3]
    item = dectris2.compress(frame, algorithm)
    assert item.elem_size == (frame.itemsize if algorithm == "bslz4" else 0)
    pipeline = hdf5plugin.Bitshuffle(cname="lz4") if algorithm == "bslz4" else hdf5plugin.LZ4()
    with h5py.File(tmp_path / "f.h5", "w") as f:
        dset = f.create_dataset("x", shape=frame.shape, chunks=frame.shape, dtype=dtype, **pipeline)
        dset.id.write_direct_chunk((0, 0), item.data)
        assert np.array_equal(dset[()], frame)
    assert np.array_equal(dectris2.decompress(item, frame.nbytes, frame.dtype).view(dtype).reshape(32, 32), frame)


@pytest.mark.parametrize("algorithm", ["bslz4", "lz4"])
def test_damaged_compressed_data_is_refused_as_corrupt(algorithm):
    frame = _scan("uint16", seed=2)[0, 0]
    item = dectris2.compress(frame, algorithm)
    for damaged in (item.data[:5], item.data[:20], item.data[:12] + b"\xff" * 40, item.data[:-3]):
        with pytest.raises(StempressError, match=f"undecodable {algorithm} data .*; the message is corrupt"):
            dectris2.decompress(item._replace(data=damaged), frame.nbytes, frame.dtype)


def _sender(messages: list[list[bytes]]) -> int:
    """A PUSH socket of our own on a free loopback port, sending ``messages`` (each a list of parts) from a thread
    once a receiver connects; returns the port."""
    import zmq

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.setsockopt(zmq.SNDTIMEO, 10000)  # a receiver that refused the stream early takes no more
    port = push.bind_to_random_port("tcp://127.0.0.1")

    def send() -> None:
        try:
            for parts in messages:
                push.send_multipart(parts)  # blocks until the receiver connects
        except zmq.Again:
            push.setsockopt(zmq.LINGER, 0)
        push.close()
        context.term()

    threading.Thread(target=send, daemon=True).start()
    return port


def _receive_messages(messages: list[list[bytes]]) -> LiveSource:
    return LiveSource(f"dectris2://127.0.0.1:{_sender(messages)}", (1, 2), timeout=5)


def _open_error(messages: list[list[bytes]]) -> str:
    with pytest.raises(StempressError) as caught:
        _receive_messages(messages)
    message = str(caught.value)
    assert "\n" not in message
    return message


FRAME = np.arange(16, dtype=np.uint16).reshape(4, 4)
START = dectris2.start_message(7, "u7", (4, 4), np.dtype(np.uint16), 2)
END = dectris2.end_message(7, "u7")


def test_a_message_that_is_not_cbor_is_refused_in_one_line():
    message = _open_error([[b"\xff\x00 not cbor"]])
    assert "is not CBOR" in message and "format cbor (Stream V2)" in message


def test_a_stream_v1_sender_is_told_to_use_dectris_url():
    message = _open_error([header_parts(1, {})])
    assert "2 parts" in message and "dectris://HOST:PORT" in message


def test_a_stream_v2_message_that_is_not_a_start_is_refused():
    message = _open_error([[dectris2.image_message(0, FRAME, "none", 7, "u7")]])
    assert "'image' message, not 'start'" in message


def test_images_with_a_wrong_tag_say_which_and_what_was_expected():
    """An image whose array is not tag 40 over a typed array (here: a typed-array tag RFC 8746 leaves unassigned,
    76) is no image; when no image is valid, the error counts them and names the first problem."""
    import cbor2

    bad = cbor2.dumps({"type": "image", "series_id": 7, "series_unique_id": "u7", "image_id": 0,
                       "data": {"threshold_1": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(76, FRAME.tobytes())])}})
    message = _open_error([[START], [bad], [bad], [END]])
    assert "2 image(s) arrived before the series end, none valid" in message
    assert "is not Stream V2: tag 40's array is tag 76, not a typed array" in message and "Stream V2 (CBOR" in message


def test_a_valid_image_among_bad_ones_counts_the_bad_ones_corrupt():
    import cbor2

    wrong_tag = cbor2.dumps({"type": "image", "series_id": 7, "series_unique_id": "u7", "image_id": 1,
                             "data": {"threshold_1": cbor2.CBORTag(41, [[4, 4], FRAME.tobytes()])}})
    live = _receive_messages([[START], [dectris2.image_message(0, FRAME, "bslz4", 7, "u7")], [wrong_tag], [END]])
    blocks = list(live.blocks())
    assert np.array_equal(blocks[0].data[0, 0], FRAME) and blocks[0].valid.tolist() == [[True, False]]
    assert (live.account.received, live.account.corrupt, live.account.ended) == (1, 1, "series end")


def test_an_image_of_a_different_series_is_not_a_frame_of_this_one():
    other = dectris2.image_message(1, FRAME + 1, "none", 8, "u8")
    live = _receive_messages([[START], [dectris2.image_message(0, FRAME, "none", 7, "u7")], [other], [END]])
    list(live.blocks())
    assert (live.account.received, live.account.corrupt, live.account.missing) == (1, 1, 1)


def test_an_image_of_the_same_series_id_but_another_unique_id_is_another_series():
    other = dectris2.image_message(1, FRAME, "none", 7, "another")
    live = _receive_messages([[START], [dectris2.image_message(0, FRAME, "none", 7, "u7")], [other], [END]])
    list(live.blocks())
    assert (live.account.received, live.account.corrupt) == (1, 1)


def test_a_new_series_starting_ends_this_one():
    live = _receive_messages([[START], [dectris2.image_message(0, FRAME, "lz4", 7, "u7")],
                              [dectris2.start_message(8, "u8", (4, 4), np.dtype(np.uint16), 2)]])
    list(live.blocks())
    assert live.account.received == 1 and live.account.ended == "series 8 started before series 7 ended"


def test_big_endian_and_column_major_arrays_decode_as_rfc_8746_says():
    import cbor2

    be = cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(65, FRAME.astype(">u2").tobytes())])  # uint16 big endian
    fortran = cbor2.CBORTag(1040, [[4, 4], cbor2.CBORTag(69, FRAME.T.astype("<u2").tobytes())])  # column-major
    for array in (be, fortran):
        message = dectris2.loads(cbor2.dumps({"type": "image", "image_id": 3, "data": {"c": array}}))
        frame = dectris2.parse_image(message, "c")
        assert frame.number == 3 and np.array_equal(frame.data, FRAME)


def test_stream_v2_refuses_a_source_it_cannot_carry():
    with pytest.raises(StempressError, match="Stream V2 carries uint8, uint16, uint32 images, not float32"):
        serve(ArraySource(np.zeros((1, 1, 4, 4), np.float32), name="f"), "dectris2", timeout=1)
    with pytest.raises(StempressError, match="unknown Stream V2 encoding 'bs16-lz4<'"):
        serve(ArraySource(np.zeros((1, 1, 4, 4), np.uint16), name="f"), "dectris2", encoding="bs16-lz4<", timeout=1)


SELF_DESCRIBED = b"\xd9\xd9\xf7"  # CBOR tag 55799, which a detector puts before every message


def _detector_like_series(frames: np.ndarray) -> list[list[bytes]]:
    """Messages as a real EIGER2 sends them (as in dectris/documentation's recorded stream): self-described CBOR,
    two threshold channels, dates, rationals and user data beside the arrays."""
    import datetime

    date = datetime.datetime(2023, 2, 10, 15, 49, 5, tzinfo=datetime.UTC)
    start = {"type": "start", "series_id": 3, "series_unique_id": "01GRX", "arm_date": date,
             "channels": ["threshold_1", "threshold_2"], "image_dtype": "uint16", "image_size_x": 4,
             "image_size_y": 4, "number_of_images": len(frames), "threshold_energy": {"threshold_1": 4000.0,
                                                                                      "threshold_2": 8000.0}}
    out = [[SELF_DESCRIBED + dectris2.dumps(start)]]
    for i, frame in enumerate(frames):
        data = {name: dectris2.MultiDimArray((4, 4), dectris2.TypedArray(np.dtype("<u2"),
                                                                          dectris2.compress(f, "bslz4")))
                for name, f in (("threshold_1", frame), ("threshold_2", frame * 2))}
        out.append([SELF_DESCRIBED + dectris2.dumps({
            "type": "image", "series_id": 3, "series_unique_id": "01GRX", "image_id": i, "series_date": date,
            "real_time": [999995, 50000000], "start_time": [0, 50000000], "stop_time": [999995, 50000000],
            "user_data": [1, "x"], "data": data})])
    return [*out, [SELF_DESCRIBED + dectris2.end_message(3, "01GRX")]]


@pytest.mark.parametrize(("query", "factor"), [("", 1), ("?channel=threshold_2", 2)])
def test_a_detector_like_series_gives_the_channel_asked_for(query, factor):
    frames = np.arange(2 * 16, dtype=np.uint16).reshape(2, 4, 4)
    live = LiveSource(f"dectris2://127.0.0.1:{_sender(_detector_like_series(frames))}{query}", (1, 2), timeout=5)
    blocks = list(live.blocks())
    assert np.array_equal(blocks[0].data[0], frames * factor) and live.account.ended == "complete"
    assert live.metadata["channel"] == f"threshold_{factor}"
    config = live.metadata["detector_config"]
    assert config["arm_date"] == "2023-02-10T15:49:05+00:00" and config["threshold_energy"]["threshold_2"] == 8000.0


def test_a_channel_the_series_has_not_is_refused_in_one_line():
    port = _sender(_detector_like_series(np.zeros((2, 4, 4), np.uint16)))
    with pytest.raises(StempressError, match=r"no channel 'difference' in this series \(its channels: threshold_1, "
                                             r"threshold_2\); give \?channel= one of them"):
        LiveSource(f"dectris2://127.0.0.1:{port}?channel=difference", (1, 2), timeout=5)
