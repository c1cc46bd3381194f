"""DECTRIS SIMPLON ZeroMQ stream (stream v1, ARINA / QUADRO / EIGER2): the detector PUSHes, we PULL.

Messages (JSON parts): the series header ``{"htype": "dheader-1.0", "series": S, ...}`` (+ the detector
configuration, the header message's second part or, from LiberTEM-live's simulator, the next message); per image
four parts ``dimage-1.0`` (``frame`` number from 0), ``dimage_d-1.0`` (``shape`` [width, height], ``type``,
``encoding`` ``bs16-lz4<`` / ``bs32-lz4<`` / ``bs8-lz4<`` / ``lz4<`` / ``<``, ``size``), the data, ``dconfig-1.0``
(times); then ``dseries_end-1.0``. Bitshuffle-LZ4 data carries the HDF5 filter's 12-byte header (big-endian total
bytes and block bytes) and is decoded by the ``bitshuffle`` library's C function (``codecs.bslz4``), plain LZ4 by
``numcodecs``. The ZeroMQ high-water mark is the backpressure: a full receive queue stops the sender."""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from stempress.codecs import bslz4
from stempress.codecs.bitshuffle import Bitshuffle
from stempress.errors import StempressError
from stempress.live.events import Corrupt, End, Event, Frame, StreamHeader
from stempress.live.zmq_pull import FrameSlots, PullReader

ENCODINGS = ("bs16-lz4<", "bs32-lz4<", "bs8-lz4<", "lz4<", "<")
_BLOCK_BYTES = 8192  # bitshuffle block size in bytes (DECTRIS and the bitshuffle filter's default)


def _bitshuffle_lz4(itemsize: int) -> Bitshuffle:
    """The ``bs*-lz4<`` encodings: the HDF5 bitshuffle filter's framing (a 12-byte header, then LZ4 blocks of
    bit-shuffled elements), with one OpenMP thread per call (a frame is too small for a team)."""
    return Bitshuffle("bslz4", nelems=_BLOCK_BYTES // itemsize, cname="lz4")


def encode_image(frame: np.ndarray, encoding: str) -> bytes:
    """``frame`` as the detector sends it with ``encoding``."""
    data = np.ascontiguousarray(frame, frame.dtype.newbyteorder("<"))
    if encoding == "<" or encoding == "":
        return data.tobytes()
    if encoding == "lz4<":
        from numcodecs import LZ4

        return bytes(LZ4().encode(data))[4:]  # numcodecs prefixes the raw size; the stream does not
    if encoding.startswith("bs") and encoding.endswith("-lz4<"):
        return _bitshuffle_lz4(data.itemsize).encode(data)
    raise StempressError(f"unknown DECTRIS encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")


def decode_image(blob: bytes, shape: tuple[int, int], dtype: np.dtype, encoding: str,
                 out: np.ndarray | None = None) -> np.ndarray:
    """The image of a ``dimage_d`` description (into ``out`` when given: C-contiguous, of ``shape`` and the
    native ``dtype``); a wrong length or undecodable data raises StempressError."""
    dtype = np.dtype(dtype).newbyteorder("<")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    try:
        if encoding in ("<", ""):
            raw = blob
        elif encoding == "lz4<":
            raw = _lz4().decode(struct.pack("<i", nbytes) + bytes(blob))
        elif encoding.startswith("bs") and encoding.endswith("-lz4<"):
            if out is not None:
                bslz4.decode(blob, count, dtype, out)
                return out
            image = bslz4.decode(blob, count, dtype).reshape(shape)
            return image if dtype.isnative else image.astype(dtype.newbyteorder("="))
        else:
            raise StempressError(f"unknown DECTRIS encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    except (ValueError, RuntimeError, struct.error) as exc:
        raise StempressError(f"undecodable {encoding} image ({exc}); the message is corrupt") from exc
    if len(raw) != nbytes:
        raise StempressError(f"image of {len(raw)} bytes, expected {nbytes}; the message is short or corrupt")
    image = np.frombuffer(raw, dtype).reshape(shape)
    if out is None:
        return image.astype(dtype.newbyteorder("="))
    out[...] = image
    return out


@cache
def _lz4() -> Any:
    from numcodecs import LZ4

    return LZ4()


#: The ``dimage`` part, byte for byte as ``json.dumps`` writes it for an int series and frame and a hex hash.
_IMAGE_HEAD_FORMAT = b'{"htype": "dimage-1.0", "series": %d, "frame": %d, "hash": "%s"}'
#: The ``dconfig`` part (times, which serve does not keep).
CONFIG_PART = json.dumps({"htype": "dconfig-1.0", "start_time": 0, "stop_time": 0, "real_time": 0}).encode()


def encoded_image(frame: np.ndarray, encoding: str) -> tuple[bytes, bytes, bytes]:
    """What an image message says of ``frame`` whatever its number: the ``dimage_d`` part, the data and its md5
    (the detector's hash; receivers refuse an empty one) in hex."""
    blob = encode_image(frame, encoding)
    height, width = frame.shape
    desc = json.dumps({"htype": "dimage_d-1.0", "shape": [width, height], "type": np.dtype(frame.dtype).name,
                       "encoding": encoding, "size": len(blob)}).encode()
    return desc, blob, hashlib.md5(blob).hexdigest().encode()


def image_head(number: int, digest: bytes, series: int = 1) -> bytes:
    """The ``dimage`` part of image ``number`` whose data has the md5 ``digest`` (hex)."""
    return _IMAGE_HEAD_FORMAT % (series, number, digest)


def image_parts(number: int, frame: np.ndarray, encoding: str, series: int = 1) -> list[bytes]:
    """The four parts of one image message."""
    desc, blob, digest = encoded_image(frame, encoding)
    return [image_head(number, digest, series), desc, blob, CONFIG_PART]


def header_parts(series: int, config: dict[str, Any]) -> list[bytes]:
    return [json.dumps({"htype": "dheader-1.0", "series": series, "header_detail": "basic"}).encode(),
            json.dumps(config).encode()]


def end_parts(series: int) -> list[bytes]:
    return [json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()]


#: An image message's first part as json.dumps and DECTRIS write it (JSON whitespace anywhere, numbers as JSON
#: spells them): a match is valid JSON with these keys, so its frame number is read without parsing the rest;
#: any other first part goes through ``json.loads``.
_WS = rb"[ \t\n\r]*"
_IMAGE_HEAD = re.compile(
    rb"%(ws)s\{%(ws)s\"htype\"%(ws)s:%(ws)s\"dimage-1\.0\"%(ws)s,%(ws)s\"series\"%(ws)s:%(ws)s-?(?:0|[1-9][0-9]*)%(ws)s,"
    rb"%(ws)s\"frame\"%(ws)s:%(ws)s(0|[1-9][0-9]*)%(ws)s,%(ws)s\"hash\"%(ws)s:%(ws)s\"[0-9a-fA-F]*\"%(ws)s\}%(ws)s"
    % {b"ws": _WS})


class Description(NamedTuple):
    """A ``dimage_d`` part: the image's shape (rows, columns), type, encoding and data bytes (None: not said)."""

    shape: tuple[int, int]
    dtype: np.dtype
    encoding: str
    size: int | None
    little: np.dtype  # ``dtype`` as the stream sends it (little endian)
    count: int  # pixels
    bitshuffled: bool  # a bs*-lz4< encoding


#: ``dimage_d`` parts seen, by their exact bytes: within a series they differ only in ``size`` (a few hundred
#: values), so each is parsed once. Bounded: cleared when full.
_DESCRIPTIONS: dict[bytes, Description] = {}
_DESCRIPTIONS_MAX = 4096


def describe(part: bytes) -> Description:
    """A ``dimage_d`` part parsed (once per distinct part); unreadable raises ValueError, KeyError or TypeError."""
    found = _DESCRIPTIONS.get(part)
    if found is None:
        desc = json.loads(part)
        shape = tuple(reversed([int(n) for n in desc["shape"]]))  # a list or a number fails here, not in .get
        dtype, encoding, size = np.dtype(desc["type"]), str(desc["encoding"]), desc.get("size")
        found = Description(shape, dtype, encoding, None if size is None else int(size),  # type: ignore[arg-type]
                            dtype.newbyteorder("<"), math.prod(shape),
                            encoding.startswith("bs") and encoding.endswith("-lz4<"))
        if len(_DESCRIPTIONS) >= _DESCRIPTIONS_MAX:
            _DESCRIPTIONS.clear()
        _DESCRIPTIONS[bytes(part)] = found
    return found


def parse_image(parts: list[bytes], head: re.Match[bytes] | None = None, slots: FrameSlots | None = None) -> Frame:
    """An image message as a frame (``head``: its first part's ``_IMAGE_HEAD`` match, when the caller has it;
    decoded into the next of ``slots`` when it fits them); anything malformed raises StempressError."""
    if len(parts) < 3:
        raise StempressError(f"image message of {len(parts)} parts, expected 4; the message is corrupt")
    head = head or _IMAGE_HEAD.fullmatch(parts[0])
    try:
        number = int(head[1]) if head is not None else int(json.loads(parts[0])["frame"])
        desc = describe(parts[1])
    except (ValueError, KeyError, TypeError) as exc:
        raise StempressError(f"unreadable image header ({exc}); the message is corrupt") from exc
    blob = parts[2]
    if desc.size is not None and desc.size != len(blob):
        raise StempressError(f"frame {number}: {len(blob)} data bytes, its header says {desc.size}; the message is "
                             "short or corrupt")
    if slots is None or not slots.fits(desc.shape, desc.little):
        return Frame(number, decode_image(blob, desc.shape, desc.dtype, desc.encoding))
    out = slots.slot()
    if desc.bitshuffled:  # the stream's usual frame: straight into the slot, as decode_image would
        try:
            bslz4.decode_into(blob, desc.count, desc.little, slots.slot_address())
        except (ValueError, RuntimeError, struct.error) as exc:
            raise StempressError(f"undecodable {desc.encoding} image ({exc}); the message is corrupt") from exc
    else:
        decode_image(blob, desc.shape, desc.dtype, desc.encoding, out)
    slots.taken()
    return Frame(number, out)


class DectrisReader(PullReader):
    """PULLs from a detector's stream interface (``tcp://HOST:PORT``, default port 9999)."""

    protocol = "dectris"

    def __init__(self, host: str, port: int, **options: Any) -> None:
        super().__init__(host, port, **options)
        self._held: list[list[bytes] | None] = []  # messages read ahead and put back (None: a receive timed out)

    def start(self) -> StreamHeader:
        """Wait for the series header (and the detector configuration: a part of the header's message, as the
        detector sends it, or the next message on its own, as LiberTEM-live's simulator sends it), then the first
        valid image (its shape and type)."""
        parts = self._recv()
        if parts is None:
            raise StempressError(f"{self.url}: no series header for {self.timeout:g} s; arm the detector (or start "
                                 "stempress serve) and check the stream interface is enabled")
        head = _json(parts[0])
        if head.get("htype") != "dheader-1.0":
            raise StempressError(f"{self.url}: the first message is {head.get('htype')!r}, not a series header "
                                 "(dheader-1.0); start the receiver before arming the detector")
        config = _json(parts[1]) if len(parts) > 1 else self._config_message()
        self.series = head.get("series")
        first = self._first_frame("the SIMPLON stream (dimage-1.0, dimage_d-1.0 with its shape, type and encoding)")
        self._batch_from(first)
        metadata = {"format": "dectris-stream", "protocol": "dectris", "url": self.url,
                    "series": self.series, "detector_config": config}
        return StreamHeader(first.data.shape, first.data.dtype, 0, metadata)  # type: ignore[arg-type]

    def _config_message(self) -> dict[str, Any]:
        """The detector configuration sent as its own message after a one-part header: a JSON object without an
        ``htype`` (every other message of the stream has one). Anything else is put back to be read as usual, and
        the configuration is empty."""
        parts = self._recv()
        config = _json(parts[0]) if parts else {}
        if config and "htype" not in config:
            return config
        self._held.append(parts)
        return {}

    def _recv(self) -> list[bytes] | None:
        return self._held.pop(0) if self._held else super()._recv()

    def _recv_queued(self) -> list[bytes] | None:
        return None if self._held else super()._recv_queued()  # a held message goes first, through _recv

    def _event(self, parts: list[bytes]) -> Event:
        head = _IMAGE_HEAD.fullmatch(parts[0])  # an image, the frame number read (nearly every message)
        if head is None and _json(parts[0]).get("htype") == "dseries_end-1.0":
            return End("series end")
        try:
            return parse_image(parts, head, self.slots)
        except StempressError as exc:
            return Corrupt(str(exc))


def _json(part: bytes) -> dict[str, Any]:
    try:
        value = json.loads(part)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
