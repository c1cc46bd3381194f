"""Merlin's raw (R64) frames: hand-made frames decode to the known image, every depth and layout round trips,
raw .mib files read as the binary ones, and ``stempress serve --merlin-format raw`` -> ``stempress live`` is
bit-exact."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest

from stempress.data.emd import EMD_DATA_PATH
from stempress.data.mib import MibSource, decode_frame, encode_frame, parse_frame_header
from stempress.data.open import open_source
from stempress.errors import StempressError
from stempress.live.receiver import LiveSource
from stempress.live.serve import serve

DEPTHS = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}


def _header(depth: int, quad: bool = False) -> bytes:
    """An MQ1 header as a Merlin (Quad) writes it in raw mode."""
    if quad:
        text = f"MQ1,000001,00768,04,{1024 * (2 if depth == 24 else 1):04d},0256,R64,  2x2,0F,2024-04-25 15:50:41"
    else:
        text = f"MQ1,000001,00384,01,{256 * (2 if depth == 24 else 1):04d},0256,R64,   1x1,01,2020-05-25 17:48:56"
    text += f".475280,0.001000,0,0,0,,MQ1A,2020-05-25T15:48:56.475280991Z,1000000ns,{depth},"
    return text.encode("ascii").ljust(768 if quad else 384, b"\x00")


def _decode(record: bytes, flip: bool = False) -> np.ndarray:
    header = parse_frame_header(record)
    return decode_frame(header, memoryview(record)[header.header_bytes:], flip_det_y=flip)


def _word(pixels: dict[int, int], bits: int) -> bytes:
    """One big-endian 64-bit word holding ``{pixel within the word: value}``, pixel 0 at the least significant
    end: built with Python ints, independent of the numpy decoder."""
    return sum(v << (bits * p) for p, v in pixels.items()).to_bytes(8, "big")


def test_hand_made_single_chip_frames_decode_to_the_known_image():
    # 1 bit: pixels 0, 9 and 63 of the first word, pixel 2 of the second; the last word of row 1 has pixel 60
    data = bytearray(256 * 256 // 8)
    data[0:8] = _word({0: 1, 9: 1, 63: 1}, 1)
    data[8:16] = _word({2: 1}, 1)
    data[32 + 24 : 32 + 32] = _word({60: 1}, 1)
    image = _decode(_header(1) + bytes(data))
    expected = np.zeros((256, 256), np.uint8)
    expected[0, [0, 9, 63, 66]] = 1
    expected[1, 192 + 60] = 1
    assert image.dtype == np.uint8 and np.array_equal(image, expected)
    assert np.array_equal(_decode(_header(1) + bytes(data), flip=True), expected[::-1])  # binary's orientation

    # 6 bit: one byte each; 12 bit: 16-bit words; values differ so a wrong order within the word fails
    data6 = bytearray(256 * 256)
    data6[0:8] = _word({0: 1, 1: 2, 2: 3, 7: 63}, 8)
    data6[256 * 3 + 8 : 256 * 3 + 16] = _word({5: 41}, 8)
    image = _decode(_header(6) + bytes(data6))
    assert image.dtype == np.uint8 and image[0, :8].tolist() == [1, 2, 3, 0, 0, 0, 0, 63]
    assert image[3, 13] == 41 and int(image.sum()) == 1 + 2 + 3 + 63 + 41

    data12 = bytearray(256 * 256 * 2)
    data12[0:8] = _word({0: 0x123, 1: 0x456, 2: 0x789, 3: 0xABC}, 16)
    data12[512 * 255 + 504 : 512 * 256] = _word({3: 4095}, 16)
    image = _decode(_header(12) + bytes(data12))
    assert image.dtype == np.uint16 and image[0, :4].tolist() == [0x123, 0x456, 0x789, 0xABC]
    assert image[255, 255] == 4095 and int((image > 0).sum()) == 5

    # 24 bit: two 12-bit frames, the first the high 12 bits
    high, low = bytearray(256 * 256 * 2), bytearray(256 * 256 * 2)
    high[0:8] = _word({0: 0xABC, 1: 0x001}, 16)
    low[0:8] = _word({0: 0xDEF, 3: 0x002}, 16)
    image = _decode(_header(24) + bytes(high) + bytes(low))
    assert image.dtype == np.uint32 and image[0, :4].tolist() == [0xABCDEF, 0x001000, 0, 0x002]


def test_hand_made_quad_frame_places_each_chip():
    # each raw row is [Q4 | Q3 | Q2 | Q1] rows of 256 bytes (6 bit); Q3 and Q4 are the bottom chips, rotated
    rows = np.zeros((256, 4, 256), np.uint8)
    marks = {(0, 3, 0): 11, (0, 2, 0): 22, (0, 1, 0): 33, (0, 0, 0): 44, (5, 3, 9): 55, (5, 1, 9): 66,
             (7, 2, 200): 77, (7, 0, 200): 88}
    for (row, chip, pixel), value in marks.items():
        group = pixel // 8 * 8
        rows[row, chip, group : group + 8] = np.frombuffer(_word({pixel % 8: value}, 8), np.uint8)
    image = _decode(_header(6, quad=True) + rows.tobytes())
    expected = np.zeros((512, 512), np.uint8)
    expected[0, 0], expected[0, 256], expected[511, 255], expected[511, 511] = 11, 22, 33, 44
    expected[5, 9], expected[506, 246] = 55, 66  # Q1 as is; Q3 row 5 -> image row 506, x 9 -> 255 - 9
    expected[7, 456], expected[504, 311] = 77, 88  # Q2 x 200 -> 456; Q4 x 200 -> 511 - 200
    assert np.array_equal(image, expected)


@pytest.mark.parametrize("side", [256, 512])
@pytest.mark.parametrize("depth", [1, 6, 12, 24])
def test_every_depth_and_layout_round_trips(depth, side):
    rng = np.random.default_rng(depth * side)
    top = {1: 2, 6: 64, 12: 4096, 24: 1 << 24}[depth]
    frame = rng.integers(0, top, (side, side), dtype=np.int64).astype(DEPTHS[depth])
    frame[0, 0], frame[-1, -1] = top - 1, 0  # the counter's full range
    record = encode_frame(3, frame, counter_depth=depth, raw=True)
    header = parse_frame_header(record)
    assert (header.raw, header.counter_depth, header.shape, header.chips) == (True, depth, frame.shape,
                                                                               1 if side == 256 else 4)
    assert len(record) == header.header_bytes + side * side * {1: 1, 6: 8, 12: 16, 24: 32}[depth] // 8
    decoded = decode_frame(header, memoryview(record)[header.header_bytes:])
    assert decoded.dtype == frame.dtype and np.array_equal(decoded, frame)
    binary = encode_frame(3, frame, counter_depth=depth)
    assert np.array_equal(_decode(binary, flip=True), decoded)  # raw and binary give one frame


def test_values_a_raw_word_cannot_hold_and_odd_geometries_are_refused():
    with pytest.raises(StempressError, match="1-bit raw"):
        encode_frame(1, np.full((256, 256), 2, np.uint8), counter_depth=1, raw=True)
    with pytest.raises(StempressError, match="24-bit raw"):
        encode_frame(1, np.full((256, 256), 1 << 24, np.uint32), counter_depth=24, raw=True)
    with pytest.raises(StempressError, match="256x256"):
        encode_frame(1, np.zeros((12, 10), np.uint16), counter_depth=12, raw=True)
    gapped = _header(6, quad=True).replace(b"  2x2,", b" 2x2G,")
    with pytest.raises(StempressError, match="2x2G"):
        _decode(gapped + bytes(512 * 512))
    roi = _header(6).replace(b",0256,R64,", b",0128,R64,")  # 128 rows read out: not a whole chip
    with pytest.raises(StempressError, match="256x128 readout pixels"):
        _decode(roi + bytes(256 * 128))


def _write_mib(path, frames: np.ndarray, depth: int, raw: bool) -> None:
    with open(path, "wb") as fh:
        for i, frame in enumerate(frames):
            fh.write(encode_frame(i + 1, frame, counter_depth=depth, raw=raw))


@pytest.mark.parametrize(("depth", "side"), [(1, 256), (12, 512), (24, 256)])
def test_a_raw_mib_file_reads_as_the_binary_one(tmp_path, depth, side):
    top = {1: 2, 12: 4096, 24: 1 << 24}[depth]
    cube = np.random.default_rng(depth).integers(0, top, (2, 3, side, side)).astype(DEPTHS[depth])
    _write_mib(tmp_path / "raw.mib", cube.reshape(-1, side, side), depth, raw=True)
    _write_mib(tmp_path / "binary.mib", cube.reshape(-1, side, side), depth, raw=False)
    raw, binary = MibSource(tmp_path / "raw.mib", (2, 3)), MibSource(tmp_path / "binary.mib", (2, 3))
    assert raw.shape == binary.shape == cube.shape and raw.dtype == binary.dtype == cube.dtype
    assert np.array_equal(raw.read_rows(1, 2), cube[1:2]) and np.array_equal(raw.read_rows(0, 2), cube)
    assert np.array_equal(binary.read_rows(0, 2), cube)
    stored = MibSource(tmp_path / "raw.mib", (2, 3), flip_det_y=False)
    assert np.array_equal(stored.read_rows(0, 1), cube[:1, :, ::-1])
    assert raw.metadata["pixel_type"] == "R64" and raw.metadata["counter_depth"] == depth
    assert raw.metadata["chips"] == (1 if side == 256 else 4)


def test_a_cut_off_raw_mib_file_is_refused(tmp_path):
    _write_mib(tmp_path / "raw.mib", np.zeros((2, 256, 256), np.uint8), 6, raw=True)
    with open(tmp_path / "raw.mib", "r+b") as fh:
        fh.truncate(384 + 256 * 256 + 100)
    with pytest.raises(StempressError, match="truncated"):
        MibSource(tmp_path / "raw.mib")


def test_serve_sends_raw_quad_frames_the_receiver_decodes_bit_exact():
    cube = np.random.default_rng(5).integers(0, 4096, (1, 3, 512, 512)).astype(np.uint16)
    ready, port, out = threading.Event(), [], {}

    def run() -> None:
        try:
            out["log"] = serve(open_source(cube), "merlin", merlin_format="raw", timeout=10,
                               ready=lambda p: (port.append(p), ready.set()))
        except Exception as exc:  # handed to the assertion below
            out["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30) and port, out.get("error")
    live = LiveSource(f"merlin://127.0.0.1:{port[0]}", cube.shape[:2], timeout=10)
    blocks = list(live.blocks())
    thread.join(30)
    assert live.metadata["pixel_type"] == "R64" and live.metadata["chips"] == 4
    assert np.array_equal(np.concatenate([b.data for b in blocks]), cube)
    assert live.account.received == 3 and live.account.ended == "complete"


def test_serve_raw_1_bit_through_stempress_live_is_bit_exact(tmp_path):
    """A 1-bit acquisition recorded in the binary format, replayed as the detector sends it in raw mode."""
    cube = (np.random.default_rng(9).random((2, 3, 256, 256)) < 0.3).astype(np.uint8)
    _write_mib(tmp_path / "scan.mib", cube.reshape(-1, 256, 256), 1, raw=False)
    assert np.array_equal(MibSource(tmp_path / "scan.mib", (2, 3)).read_rows(0, 2), cube)
    server = subprocess.Popen([sys.executable, "-m", "stempress", "serve", str(tmp_path / "scan.mib"), "--as",
                               "merlin", "--merlin-format", "raw", "--scan-shape", "2x3", "--port", "0",
                               "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = re.search(r"on 127\.0\.0\.1:(\d+)", server.stdout.readline())  # type: ignore[union-attr]
    assert found, server.stderr.read() if server.poll() is not None else ""  # type: ignore[union-attr]
    done = subprocess.run([sys.executable, "-m", "stempress", "live", f"merlin://127.0.0.1:{found.group(1)}",
                           "--scan-shape", "2x3", "--archive", str(tmp_path / "a.h5"), "--chunks", "1x3x256x256",
                           "--timeout", "10"], capture_output=True, text=True, timeout=120)
    server.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "a.h5") as f:
        assert f[EMD_DATA_PATH].dtype == np.uint8 and np.array_equal(f[EMD_DATA_PATH][()], cube)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_a_binary_frame_decoded_without_a_copy_holds_the_same_values(dtype):
    frame = np.random.default_rng(3).integers(0, 200, (5, 7)).astype(dtype)
    record = bytearray(encode_frame(42, frame))
    header = parse_frame_header(record)
    assert (header.number, header.shape, header.record_bytes) == (42, (5, 7), len(record))
    view = decode_frame(header, memoryview(record)[header.header_bytes:], copy=False)
    assert np.shares_memory(view, np.frombuffer(record, np.uint8))  # no copy: the receiver copies it once
    assert np.array_equal(view, frame) and np.array_equal(_decode(bytes(record), True), frame)
    with pytest.raises(StempressError, match=r"unreadable \.mib frame header"):
        parse_frame_header(record[:100])  # shorter than its 384-byte header
    with pytest.raises(StempressError, match=r"unreadable \.mib frame header"):
        parse_frame_header(b"MQ1,000001,00999," + bytes(record[17:]))


@pytest.mark.parametrize("raw", [False, True])
def test_a_record_built_into_the_last_ones_buffer_is_the_record_built_fresh(raw):
    rng = np.random.default_rng(9)
    first, second = (rng.integers(0, 4096, (256, 256)).astype(np.uint16) for _ in range(2))
    buffer = encode_frame(1, first, raw=raw, counter_depth=12)
    reused = encode_frame(123456, second, raw=raw, counter_depth=12, out=buffer,
                          time="2026-12-07 01:02:03.000000")
    fresh = encode_frame(123456, second, raw=raw, counter_depth=12, time="2026-12-07 01:02:03.000000")
    assert reused is buffer and reused == fresh
    header = parse_frame_header(bytes(reused[:768]))
    assert np.array_equal(decode_frame(header, reused[header.header_bytes:]), second)
    small = encode_frame(1, second[:8, :8], out=buffer)  # a buffer of another size is not used
    assert small is not buffer and small == encode_frame(1, second[:8, :8])
