"""Live acquisition: receivers (Merlin TCP, DECTRIS ZeroMQ) fed by hand-made senders and by ``serve``, their
frame accounting, and their blocks through the engine's sinks. Loopback ports are taken free at run time."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from stempress.data.mib import encode_frame
from stempress.errors import StempressError
from stempress.live import LiveSource
from stempress.live.dectris import decode_image, encode_image
from stempress.live.merlin import acquisition_header, mpx_message


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
