"""DECTRIS SIMPLON Stream V2 (firmware 2022.1 on; SIMPLON ``stream/config`` ``format: cbor``, port 31001): the
detector PUSHes one CBOR map per ZeroMQ message (no multipart), we PULL.

Messages (``type`` first): ``start`` at arm (``series_id``, ``series_unique_id``, ``channels``, ``image_size_x``
/ ``_y``, ``image_dtype`` uint8/16/32, ``number_of_images`` ...), one ``image`` per exposure (``image_id`` from 0,
``series_id``, ``data``: channel name -> multi-dimensional array, ``real_time`` / ``start_time`` / ``stop_time``
as [numerator, denominator]), ``end`` at disarm. Arrays are RFC 8746: tag 40 ``[[rows, columns], typed array]``
(tag 1040 column-major), typed arrays tag 64 + flags (69: uint16 little-endian, 70: uint32 LE, 64: uint8 ...)
over a byte string, or over DECTRIS's compression tag 56500 ``["bslz4", element size, bytes]`` /
``["lz4", 0, bytes]`` whose bytes are framed as the HDF5 filters frame them (``codecs.bitshuffle``,
``codecs.lz4`` decode them). A detector wraps each message in the self-described CBOR tag 55799. The receiver
takes one channel: the first the start message lists, or ``dectris2://HOST:PORT?channel=NAME``."""

from __future__ import annotations

import datetime
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from stempress.codecs import bslz4
from stempress.errors import StempressError
from stempress.live.events import Corrupt, End, Event, Frame, StreamHeader
from stempress.live.zmq_pull import PullReader

DEFAULT_PORT = 31001
#: Compressions of the image data, as ``serve --encoding`` names them.
ENCODINGS = ("bslz4", "lz4", "none")
IMAGE_DTYPES = ("uint8", "uint16", "uint32")
MULTI_DIM_ROW_MAJOR, MULTI_DIM_COLUMN_MAJOR, DECTRIS_COMPRESSION = 40, 1040, 56500
DEFAULT_CHANNEL = "threshold_1"
_EXPECTED = "DECTRIS Stream V2 (CBOR start, image and end maps; images as tag-40 arrays of typed arrays)"


def _typed_array_dtypes() -> dict[int, np.dtype]:
    """RFC 8746 typed-array tags 64-87 (``0b010_f_s_e_ll``) with a numpy dtype: integers of 1-8 bytes, signed
    or not, big or little endian (68, uint8 clamped, reads as uint8), floats of 2-8 bytes."""
    out: dict[int, np.dtype] = {}
    for tag in range(64, 88):
        floating, signed, little, size = (tag >> 4) & 1, (tag >> 3) & 1, (tag >> 2) & 1, tag & 3
        order = "<" if little else ">"
        if not floating and not (signed and size == 0 and little):  # 76 (int8 "little endian") is unassigned
            out[tag] = np.dtype(f"{order}{'i' if signed else 'u'}{1 << size}")
        elif floating and not signed and size < 3:  # no 128-bit floats
            out[tag] = np.dtype(f"{'<' if little else '>'}f{2 << size}")
    return out


TYPED_ARRAY_DTYPES = _typed_array_dtypes()
#: The little-endian tag of each image dtype, as the detector sends them.
TYPED_ARRAY_TAG = {np.dtype(name).newbyteorder("<"): tag for tag, name in ((64, "u1"), (69, "<u2"), (70, "<u4"))}


class Compressed(NamedTuple):
    """Tag 56500's content: ``algorithm`` (bslz4, lz4), the element size, the HDF5-framed compressed bytes."""

    algorithm: str
    elem_size: int
    data: bytes


class TypedArray(NamedTuple):
    dtype: np.dtype
    payload: bytes | Compressed


@dataclass(frozen=True)
class MultiDimArray:
    """Tag 40 / 1040: ``shape`` and a typed array, decoded only when asked (an image's other channels never)."""

    shape: tuple[int, ...]
    array: TypedArray
    order: str = "C"

    def decode(self) -> np.ndarray:
        dtype, payload = self.array
        nbytes = math.prod(self.shape) * dtype.itemsize
        if isinstance(payload, Compressed):
            payload = decompress(payload, nbytes, dtype)  # type: ignore[assignment]
        if len(payload) != nbytes:
            raise StempressError(f"array of {len(payload)} bytes, its shape {list(self.shape)} of {dtype.name} "
                                 f"needs {nbytes}; the message is short or corrupt")
        return np.frombuffer(payload, dtype).reshape(self.shape, order=self.order)  # type: ignore[call-overload]


@cache
def _codec(algorithm: str) -> Any:
    """The HDF5 filter framing of ``algorithm`` (its one home: ``codecs``)."""
    from stempress.codecs.bitshuffle import Bitshuffle
    from stempress.codecs.lz4 import Lz4

    return Bitshuffle("bslz4", cname="lz4") if algorithm == "bslz4" else Lz4("lz4")


def decompress(item: Compressed, nbytes: int, dtype: np.dtype) -> np.ndarray:
    """The bytes tag 56500 stands for (its HDF5 framing says how many; they must be ``nbytes``)."""
    if item.algorithm == "bslz4":
        if item.elem_size not in (1, 2, 4, 8):
            raise StempressError(f"bslz4 element size {item.elem_size} is not 1, 2, 4 or 8; the message is corrupt")
        like = np.dtype(f"u{item.elem_size}")  # bitshuffle transposes the bits of elem_size-byte elements
    elif item.algorithm == "lz4":
        like = np.dtype(np.uint8)
    else:
        raise StempressError(f"unknown DECTRIS compression {item.algorithm!r} (tag {DECTRIS_COMPRESSION}); expected "
                             "bslz4 or lz4")
    if nbytes % like.itemsize:
        raise StempressError(f"{nbytes} bytes of {dtype.name} are not whole {like.itemsize}-byte bslz4 elements")
    try:
        if item.algorithm == "bslz4":  # bitshuffle's C function, its blocks checked first (codecs.bslz4)
            return bslz4.decode(item.data, nbytes // like.itemsize, like).view(np.uint8)
        return _codec(item.algorithm).decode(item.data, (nbytes // like.itemsize,), like).view(np.uint8)
    except (ValueError, RuntimeError, TypeError, struct.error) as exc:  # a wrong size, a bad block, short data
        raise StempressError(f"undecodable {item.algorithm} data ({exc}); the message is corrupt") from exc


def compress(data: np.ndarray, algorithm: str) -> Compressed:
    """``data`` as tag 56500 holds it."""
    flat = np.ascontiguousarray(data).reshape(-1)
    if algorithm == "bslz4":
        return Compressed("bslz4", flat.dtype.itemsize, _codec("bslz4").encode(flat))
    if algorithm == "lz4":
        return Compressed("lz4", 0, _codec("lz4").encode(flat))
    raise StempressError(f"unknown Stream V2 compression {algorithm!r}; choose one of {', '.join(ENCODINGS)}")


# -- CBOR ------------------------------------------------------------------------------------------------------


class NotStreamV2(ValueError):
    """Valid CBOR whose tags are not what Stream V2 puts there."""


def _tag_hook(tag: Any, immutable: bool) -> Any:
    """The three kinds of tag an image holds, checked as they decode (inner tags first); others stay CBORTags
    (a DateTime, tag 0, cbor2 decodes itself)."""
    value = tag.value
    if tag.tag == DECTRIS_COMPRESSION:
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
                and isinstance(value[1], int) and isinstance(value[2], bytes)):
            raise NotStreamV2(f"tag {DECTRIS_COMPRESSION} holds {_kind(value)}, not [algorithm, element size, bytes]")
        return Compressed(*value)
    if tag.tag in TYPED_ARRAY_DTYPES:
        if not isinstance(value, (bytes, Compressed)):
            raise NotStreamV2(f"typed array tag {tag.tag} holds {_kind(value)}, not a byte string")
        return TypedArray(TYPED_ARRAY_DTYPES[tag.tag], value)
    if tag.tag in (MULTI_DIM_ROW_MAJOR, MULTI_DIM_COLUMN_MAJOR):
        inner = value[1] if isinstance(value, (list, tuple)) and len(value) == 2 else None
        if hasattr(inner, "tag") and hasattr(inner, "value"):  # a tag no hook took
            raise NotStreamV2(f"tag {tag.tag}'s array is tag {inner.tag}, not a typed array (RFC 8746 tags 64-87, "
                              "76 unassigned)")
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (list, tuple))
                and all(isinstance(n, int) and n >= 0 for n in value[0]) and isinstance(value[1], TypedArray)):
            raise NotStreamV2(f"tag {tag.tag} holds {_kind(value)}, not [dimensions, typed array]")
        return MultiDimArray(tuple(value[0]), value[1], "C" if tag.tag == MULTI_DIM_ROW_MAJOR else "F")
    return tag


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.40}"


def loads(message: bytes) -> dict[str, Any]:
    """One Stream V2 message as a map with its ``type``; anything else raises StempressError saying what it is."""
    import cbor2

    try:
        value = cbor2.loads(message, tag_hook=_tag_hook)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        if isinstance(exc.__cause__, NotStreamV2):  # cbor2 wraps what a tag hook raises
            raise StempressError(f"a CBOR message is not Stream V2: {exc.__cause__}") from exc
        raise StempressError(f"a message of {len(message)} bytes is not CBOR ({exc}){_looks_like(message)}") from exc
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise StempressError(f"a message is CBOR {type(value).__name__}, not a map with a 'type'; "
                             "not a Stream V2 message")
    return dict(value)  # a detector's self-described CBOR (tag 55799) decodes as a frozendict


def _looks_like(message: bytes) -> str:
    """A hint when a message is a stream v1 one (JSON)."""
    return ": it is JSON, as stream v1 sends (receive it with dectris://)" if message[:1] == b"{" else ""


def dumps(message: Mapping[str, Any]) -> bytes:
    """``message`` as CBOR, with ``MultiDimArray`` as tag 40 over a typed array (compressed ones tagged 56500)."""
    import cbor2

    def encode(encoder: Any, value: Any) -> None:
        if not isinstance(value, MultiDimArray):
            raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__}")
        dtype, payload = value.array
        tag = TYPED_ARRAY_TAG.get(dtype)
        if tag is None:
            raise StempressError(f"Stream V2 carries {', '.join(IMAGE_DTYPES)} images, not {dtype.name}")
        if isinstance(payload, Compressed):  # a NamedTuple would go out as a plain array: tag it here
            payload = cbor2.CBORTag(DECTRIS_COMPRESSION, list(payload))
        encoder.encode(cbor2.CBORTag(MULTI_DIM_ROW_MAJOR, [list(value.shape), cbor2.CBORTag(tag, payload)]))

    return cbor2.dumps(dict(message), default=encode)


# -- messages, as the detector sends them ---------------------------------------------------------------------


def image_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a Stream V2 image of ``dtype`` goes out as (little endian), or a one-line refusal."""
    little = np.dtype(dtype).newbyteorder("<")
    if little not in TYPED_ARRAY_TAG:
        raise StempressError(f"Stream V2 carries {', '.join(IMAGE_DTYPES)} images, not {np.dtype(dtype).name}; "
                             "serve this source --as dectris or --as merlin")
    return little


def start_message(series_id: int, unique_id: str, det_shape: tuple[int, int], dtype: np.dtype, images: int,
                  channel: str = DEFAULT_CHANNEL, **fields: Any) -> bytes:
    height, width = (int(n) for n in det_shape)
    return dumps({"type": "start", "series_id": series_id, "series_unique_id": unique_id,
                  "arm_date": datetime.datetime.now(datetime.UTC), "channels": [channel],
                  "image_dtype": image_dtype(dtype).name, "image_size_x": width, "image_size_y": height,
                  "number_of_images": int(images), **fields})


def image_array(frame: np.ndarray, encoding: str, cut: int = 0) -> MultiDimArray:
    """``frame`` as an image message carries it; ``cut`` bytes taken off the (encoded) data rehearse a corrupt
    message."""
    data = np.ascontiguousarray(frame, image_dtype(frame.dtype))
    payload: bytes | Compressed = data.tobytes() if encoding == "none" else compress(data, encoding)
    if cut:
        payload = payload[:-cut] if isinstance(payload, bytes) else payload._replace(data=payload.data[:-cut])
    return MultiDimArray(tuple(data.shape), TypedArray(data.dtype, payload))


def image_message(image_id: int, frame: np.ndarray | MultiDimArray, encoding: str, series_id: int, unique_id: str,
                  channel: str = DEFAULT_CHANNEL, cut: int = 0) -> bytes:
    """Image ``image_id`` of ``frame`` (or of its ``image_array``, encoded already: ``encoding`` and ``cut``
    were applied to it)."""
    array = frame if isinstance(frame, MultiDimArray) else image_array(frame, encoding, cut)
    return dumps({"type": "image", "series_id": series_id, "series_unique_id": unique_id, "image_id": image_id,
                  "real_time": [0, 1], "start_time": [0, 1], "stop_time": [0, 1], "data": {channel: array}})


def end_message(series_id: int, unique_id: str) -> bytes:
    return dumps({"type": "end", "series_id": series_id, "series_unique_id": unique_id})


def parse_image(message: Mapping[str, Any], channel: str, det_shape: tuple[int, int] | None = None,
                dtype: np.dtype | None = None) -> Frame:
    """An image map's frame of ``channel`` (of ``det_shape`` and ``dtype``, when given: the series start's);
    anything malformed raises StempressError."""
    image_id = message.get("image_id")
    if not isinstance(image_id, int) or image_id < 0:
        raise StempressError(f"image_id {image_id!r} is not a number from 0; the message is corrupt")
    data = message.get("data")
    array = data.get(channel) if isinstance(data, Mapping) else None
    if not isinstance(array, MultiDimArray):
        names = sorted(data) if isinstance(data, Mapping) else data
        raise StempressError(f"image {image_id}: no {channel!r} array in its data (has {_kind(names)}); the message "
                             "is corrupt")
    if len(array.shape) != 2 or (det_shape is not None and array.shape != tuple(det_shape)):
        raise StempressError(f"image {image_id}: shape {list(array.shape)}, the series start says "
                             f"{list(det_shape or ())}; the message is corrupt")
    if dtype is not None and array.array.dtype.newbyteorder("<") != np.dtype(dtype).newbyteorder("<"):
        raise StempressError(f"image {image_id}: {array.array.dtype.name} pixels, the series start says "
                             f"{np.dtype(dtype).name}; the message is corrupt")
    try:
        frame = array.decode()
    except StempressError as exc:
        raise StempressError(f"image {image_id}: {exc}") from exc
    return Frame(image_id, frame)


def _json_safe(value: Any) -> Any:
    """Start-message fields for provenance (JSON): dates as text, arrays (flat fields, masks) left out."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: v for k, v in ((str(k), _json_safe(x)) for k, x in value.items()) if v is not _OMIT}
    if isinstance(value, (list, tuple)):
        items = [_json_safe(x) for x in value]
        return _OMIT if _OMIT in items else items
    return _OMIT


_OMIT = object()


class Dectris2Reader(PullReader):
    """PULLs Stream V2 from a detector (``tcp://HOST:PORT``, default port 31001) and takes ``channel`` of each
    image (None: the first the start message lists)."""

    protocol = "dectris2"

    def __init__(self, host: str, port: int, *, channel: str | None = None, **options: Any) -> None:
        super().__init__(host, port, **options)
        self.channel = channel

    def start(self) -> StreamHeader:
        """Wait for the start message, then the first valid image (its shape and type)."""
        parts = self._recv()
        if parts is None:
            raise StempressError(f"{self.url}: no start message for {self.timeout:g} s; arm the detector (or start "
                                 "stempress serve --as dectris2) and check the stream is enabled with format cbor")
        if len(parts) != 1:
            raise StempressError(f"{self.url}: a message of {len(parts)} parts, not one CBOR map; a stream v1 "
                                 "(legacy, multipart JSON) sender is received with dectris://HOST:PORT")
        try:
            start = loads(parts[0])
        except StempressError as exc:
            raise StempressError(f"{self.url}: {exc}; is the detector's stream format cbor (Stream V2)?") from exc
        if start["type"] != "start":
            raise StempressError(f"{self.url}: the first message is a {start['type']!r} message, not 'start'; start "
                                 "the receiver before arming the detector")
        self.series_id, self.unique_id = start.get("series_id"), start.get("series_unique_id")
        channels = [str(c) for c in start.get("channels") or [DEFAULT_CHANNEL]]
        if self.channel is None:
            self.channel = channels[0]
        elif self.channel not in channels:
            raise StempressError(f"{self.url}: no channel {self.channel!r} in this series (its channels: "
                                 f"{', '.join(channels)}); give ?channel= one of them")
        try:
            self.det_shape: tuple[int, int] | None = (int(start["image_size_y"]), int(start["image_size_x"]))
        except (KeyError, TypeError, ValueError):
            self.det_shape = None  # the first image says
        named = start.get("image_dtype")
        self.dtype: np.dtype | None = np.dtype(named) if named in IMAGE_DTYPES else None
        first = self._first_frame(_EXPECTED)
        self._batch_from(first)
        metadata = {"format": "dectris-stream-v2", "protocol": self.protocol, "url": self.url,
                    "series": self.series_id, "series_unique_id": self.unique_id, "channel": self.channel,
                    "detector_config": _json_safe({k: v for k, v in start.items() if k != "type"})}
        return StreamHeader(first.data.shape, first.data.dtype, 0, metadata)  # type: ignore[arg-type]

    def _event(self, parts: list[bytes]) -> Event:
        try:
            if len(parts) != 1:
                raise StempressError(f"a message of {len(parts)} parts, not one CBOR map")
            message = loads(parts[0])
            kind, series = message["type"], message.get("series_id")
            if kind == "end":
                return End("series end" if series == self.series_id else
                           f"the end of series {series}, while series {self.series_id} was running")
            if kind == "start":
                return End(f"series {series} started before series {self.series_id} ended")
            if kind != "image":
                raise StempressError(f"a {kind!r} message, not an image")
            unique = message.get("series_unique_id")
            if series != self.series_id or (None not in (unique, self.unique_id) and unique != self.unique_id):
                raise StempressError(f"image {message.get('image_id')!r} of series {series!r} ({unique}), not of "
                                     f"series {self.series_id!r} ({self.unique_id}): a different series")
            frame = parse_image(message, str(self.channel), self.det_shape, self.dtype)
            if self.det_shape is None or self.dtype is None:  # the first valid image sets what the start did not
                self.det_shape, self.dtype = frame.data.shape, frame.data.dtype  # type: ignore[assignment]
            slots = self.slots
            if slots is not None and slots.fits(frame.data.shape, frame.data.dtype):
                slot = slots.slot()  # a copy (the frame is a view of the decoded bytes) that can join a batch
                slot[...] = frame.data
                slots.taken()
                return Frame(frame.number, slot)
            return frame
        except StempressError as exc:
            return Corrupt(str(exc))
