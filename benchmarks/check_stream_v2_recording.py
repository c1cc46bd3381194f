"""Check that ``stempress live dectris2://`` receives a real detector's recorded DECTRIS Stream V2 series bit for bit.

    git clone -b stream2-test_data https://github.com/dectris/documentation
    python benchmarks/check_stream_v2_recording.py documentation/stream_v2/test_data/r500k_bm_bslz4_16bit ...

A recording is a folder of one message per file (``000000.cbor`` the start, then the images, then the end, as
DECTRIS recorded an EIGER2 with three channels: ``threshold_1``, ``threshold_2``, ``difference``). Each folder is
pushed, message for message, over ZeroMQ on loopback to ``LiveSource("dectris2://...?channel=NAME")`` once per
channel; every frame must equal HDF5's own filters (``hdf5plugin``'s bitshuffle and LZ4, through
``write_direct_chunk``) decoding the same compressed bytes, and the account must be complete. A recording whose
start message is missing (large: it may hold flat fields and masks) gets one made from the first image's fields.
Prints PASS / FAIL per folder and channel; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import zmq

from stempress.live import LiveSource, dectris2


def reference(message: dict, channel: str, scratch: Path) -> np.ndarray:
    """The channel's frame as HDF5's filters decode its compressed bytes (an uncompressed one as it is)."""
    array = message["data"][channel]
    payload = array.array.payload
    if not isinstance(payload, dectris2.Compressed):
        return np.frombuffer(payload, array.array.dtype).reshape(array.shape)
    pipeline = hdf5plugin.Bitshuffle(cname="lz4") if payload.algorithm == "bslz4" else hdf5plugin.LZ4()
    with h5py.File(scratch / "frame.h5", "w") as f:
        dset = f.create_dataset("x", shape=array.shape, chunks=array.shape, dtype=array.array.dtype, **pipeline)
        dset.id.write_direct_chunk((0,) * len(array.shape), payload.data)
        return dset[()]


def messages(folder: Path) -> list[bytes]:
    """The recording's messages in order, a start made from the first image when the recording has none; none when
    it holds no image."""
    out = [p.read_bytes() for p in sorted(folder.glob("*.cbor")) if p.stat().st_size]
    if not any(dectris2.loads(m)["type"] == "image" for m in out):
        return []
    if dectris2.loads(out[0])["type"] != "start":
        first = dectris2.loads(out[0])
        array = next(iter(first["data"].values()))
        out.insert(0, dectris2.dumps({"type": "start", "series_id": first["series_id"],
                                      "series_unique_id": first["series_unique_id"], "channels": list(first["data"]),
                                      "image_dtype": array.array.dtype.name, "image_size_x": array.shape[1],
                                      "image_size_y": array.shape[0], "number_of_images": len(out) - 1}))
    return out


def receive(stream: list[bytes], channel: str, images: int) -> tuple[np.ndarray, LiveSource]:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    port = push.bind_to_random_port("tcp://127.0.0.1")

    def send() -> None:
        for message in stream:
            push.send(message)
        push.close()
        context.term()

    threading.Thread(target=send, daemon=True).start()
    live = LiveSource(f"dectris2://127.0.0.1:{port}?channel={channel}", (1, images), timeout=10)
    return np.concatenate([b.data for b in live.blocks()])[0], live


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="recorded series, one message per .cbor file")
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as scratch:
        for folder in args.folders:
            stream = messages(folder)
            if not stream:
                failed += 1
                print(f"FAIL {folder.name}: no image messages in {folder} (a partial copy of the recording?)")
                continue
            images = [m for m in map(dectris2.loads, stream) if m["type"] == "image"]
            for channel in images[0]["data"]:
                got, live = receive(stream, channel, len(images))
                expected = np.stack([reference(m, channel, Path(scratch)) for m in images])
                same = got.dtype == expected.dtype and np.array_equal(got, expected)
                ok = same and live.account.ended == "complete"
                failed += not ok
                print(f"{'PASS' if ok else 'FAIL'} {folder.name} {channel}: {len(images)} images "
                      f"{tuple(got.shape[1:])} {got.dtype}, {'bit-exact' if same else 'DIFFERENT'}; "
                      f"{live.account.summary()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
