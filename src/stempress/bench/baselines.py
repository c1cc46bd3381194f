"""The study's three non-HDF5 baselines, as streaming file formats that are lossless on every dtype.

Each writes the study's own files where the study's version is lossless (counts: unsigned integers), so the
ratios are its script's; where its casts lose data (uint16 values in CSR, uint8 clipping of fractions and
signs) ours keep every value, bit for bit (NaN, inf, -0.0 included): a ratio is never bought with lost values.
``study_difference`` says, per dtype, how each differs from the study's, what is timed included.
Each writer consumes blocks of scan rows and each reader yields them, so no format holds a whole cube.
Files are ``.npy``, zip and pickle: only read files this toolkit wrote (pickle runs code).
They are the benchmark's (``bench.measure`` writes and times them), so they sit above the event formats that the
event-list and entropy-coded methods write.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np

from stempress.codecs.catalog import Codec, get_codec
from stempress.data.base import DEFAULT_BLOCK_BYTES, Block, block_rows, iter_blocks, row_spans
from stempress.errors import StempressError

Shape = tuple[int, int, int, int]


@runtime_checkable
class FileFormat(Protocol):
    """A codec stored outside HDF5: the runner sums the sizes of every path ``write`` returns."""

    name: str
    suffix: str

    def write(self, path: Path, blocks: Iterable[Block], shape: Shape, dtype: Any) -> list[Path]: ...

    def read(self, path: Path, shape: Shape, dtype: Any, rows: int | None = None) -> Iterator[Block]: ...


def _checked(blocks: Iterable[Block], shape: Shape, dtype: np.dtype, where: str) -> Iterator[Block]:
    """Pass blocks through, refusing gaps, overlaps, wrong frames or dtypes, and a short cube."""
    expected = 0
    for block in blocks:
        data = np.ascontiguousarray(block.data)
        if block.start != expected:
            raise StempressError(f"{where}: block starts at row {block.start}, expected {expected}; "
                                 "feed blocks of whole scan rows in order")
        if data.shape[1:] != tuple(shape[1:]) or block.stop > shape[0]:
            raise StempressError(f"{where}: block of shape {data.shape} does not fit cube {tuple(shape)}; "
                                 "give the cube's shape")
        if data.dtype != dtype:
            raise StempressError(f"{where}: block dtype {data.dtype} differs from declared {dtype}; "
                                 "declare the source's dtype")
        expected = block.stop
        yield Block(block.start, data)
    if expected != shape[0]:
        raise StempressError(f"{where}: got {expected} scan rows, cube has {shape[0]}; feed every row")


def _bits(data: np.ndarray) -> np.ndarray:
    """The raw bit patterns, so -0.0 counts as non-zero and NaN equals itself."""
    return data.view(f"u{data.dtype.itemsize}")


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    return {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}


def _read_exact(f: IO[bytes], n: int, where: str) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise StempressError(f"{where}: file ends after {got} of {n} bytes; it is truncated, rewrite it")
        got += k
    return buf


def _cleanup_on_error(paths: list[Path], write: Callable[[], None]) -> list[Path]:
    """Run ``write``; on failure delete the partial files so no half-written result is measured."""
    try:
        write()
    except BaseException:
        for p in paths:
            p.unlink(missing_ok=True)
        raise
    return paths


class SparseCSR:
    """SciPy CSR matrices, one per frame, pickled as a list (the study's CSR baseline, in one ``pickle.dump``).

    Values are stored as uint16, as the study did, when that is lossless (bool, uint8, uint16 cubes), so the
    file is the study's; other dtypes keep their own (the study's cast loses their data). Frames are pickled
    in lists of at most :data:`PICKLE_BYTES` of CSR arrays, one ``pickle.dump`` each: a cube whose CSR fits is
    exactly the study's single list, a larger one costs a few hundred bytes per further list instead of
    holding every frame in memory (a pickler keeps what it has written until the dump ends).
    """

    name = "sparse_csr"
    suffix = ".pkl"

    def write(self, path: Path, blocks: Iterable[Block], shape: Shape, dtype: Any) -> list[Path]:
        from scipy.sparse import csr_matrix

        path, dtype = Path(path), np.dtype(dtype)
        det = tuple(shape[2:])
        stored = csr_value_dtype(dtype)

        def run() -> None:
            with open(path, "wb") as f:
                pending: list[Any] = []
                pending_bytes = 0
                for block in _checked(blocks, shape, dtype, self.name):
                    frames = block.data.reshape(-1, *det)
                    nonzero = _bits(frames) != 0
                    for frame, mask in zip(frames, nonzero, strict=True):
                        # Built from bit patterns, not `!= 0`, so an explicit -0.0 survives.
                        r, c = np.nonzero(mask)
                        indptr = np.zeros(det[0] + 1, dtype=np.int64)
                        np.cumsum(np.bincount(r, minlength=det[0]), out=indptr[1:])
                        m = csr_matrix((frame[r, c].astype(stored, copy=False), c, indptr), shape=det)
                        pending.append(m)
                        pending_bytes += m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
                        if pending_bytes >= PICKLE_BYTES:
                            pickle.dump(pending, f)
                            pending, pending_bytes = [], 0
                if pending:
                    pickle.dump(pending, f)

        return _cleanup_on_error([path], run)

    def read(self, path: Path, shape: Shape, dtype: Any, rows: int | None = None) -> Iterator[Block]:
        dtype = np.dtype(dtype)
        step = block_rows(shape, dtype, rows=rows)
        with open(path, "rb") as f:
            frames = self._frames(f, path, tuple(shape[2:]), csr_value_dtype(dtype), shape)
            for start, stop in row_spans(shape[0], step):
                out = np.zeros(((stop - start) * shape[1], *shape[2:]), dtype=dtype)
                for frame in out:
                    m = next(frames)
                    # Assign, never sum (toarray adds to zero and would turn -0.0 into +0.0).
                    frame[np.repeat(np.arange(shape[2]), np.diff(m.indptr)), m.indices] = m.data
                yield Block(start, out.reshape(stop - start, *shape[1:]))

    @staticmethod
    def _frames(f: IO[bytes], path: Path, det: tuple[int, ...], stored: np.dtype, shape: Shape) -> Iterator[Any]:
        """Every frame of the pickled lists in order; refuses a short file or a frame of another kind."""
        from scipy.sparse import csr_matrix

        while True:
            try:
                frames = pickle.load(f)
            except EOFError:
                raise StempressError(f"{path}: fewer frames than the cube {tuple(shape)} needs; "
                                     "the file is truncated, rewrite it") from None
            if not isinstance(frames, list):
                raise StempressError(f"{path}: is not a pickled list of CSR frames; rewrite it with stempress")
            for m in frames:
                if not isinstance(m, csr_matrix) or m.shape != det or m.dtype != stored:
                    raise StempressError(f"{path}: holds a frame that is not a {det} {stored} CSR matrix; "
                                         "give the shape and dtype it was written with")
                yield m


#: CSR arrays pickled in one list at most (a new ``pickle.dump`` starts after it).
PICKLE_BYTES = DEFAULT_BLOCK_BYTES


def csr_value_dtype(dtype: Any) -> np.dtype:
    """The study casts CSR values to uint16; kept where that is lossless, the cube's own dtype elsewhere."""
    dtype = np.dtype(dtype)
    return np.dtype(np.uint16) if dtype.kind in "bu" and dtype.itemsize <= 2 else dtype


class Uint8Overflow:
    """The study's uint8 + overflow map: a uint8 ``.npy`` (values 0-254 as they are, 255 marking an overflow) and
    beside it ``<path>.overflow.npz`` in ``np.savez_compressed``'s layout: ``coords`` (one row of 4 int64 scan and
    detector indices per overflow, in C order) and ``values`` (the original values, the cube's dtype).

    The study flags values >= 255 and clips the rest, which loses fractions and negative values; here every value
    that uint8 cannot hold exactly is an overflow, so the pair is lossless, and on counts (unsigned integers) it
    is the study's pair byte for byte apart from the zip's time stamps. The overflows are staged in raw side files
    while blocks arrive and zipped at the end, so memory does not grow with their number.
    """

    name = "uint8_overflow"
    suffix = ".npy"
    #: Overflows converted or copied at a time while zipping and reading.
    chunk = 1 << 20

    @staticmethod
    def side_file(path: Path) -> Path:
        path = Path(path)
        return path.with_name(path.name + ".overflow.npz")

    def write(self, path: Path, blocks: Iterable[Block], shape: Shape, dtype: Any) -> list[Path]:
        path, dtype = Path(path), np.dtype(dtype)
        npz = self.side_file(path)
        staged = [path.with_name(f".{path.name}.{part}.partial") for part in ("index", "values")]
        row_size = int(np.prod(shape[1:]))

        def run() -> None:
            try:
                with open(path, "wb") as fu, open(staged[0], "wb") as fi, open(staged[1], "wb") as fv:
                    np.lib.format.write_array_header_1_0(fu, _npy_header(shape, np.dtype(np.uint8)))
                    for block in _checked(blocks, shape, dtype, self.name):
                        data = block.data
                        with np.errstate(invalid="ignore", over="ignore"):
                            small = np.clip(data, 0, 254).astype(np.uint8)
                        overflow = np.flatnonzero(_bits(small.astype(dtype)) != _bits(data))
                        small.reshape(-1)[overflow] = 255
                        fu.write(small.reshape(-1).data)
                        (overflow + block.start * row_size).astype("<i8").tofile(fi)
                        data.reshape(-1)[overflow].tofile(fv)
                self._zip(npz, staged, shape, dtype)
            finally:
                for p in staged:
                    p.unlink(missing_ok=True)

        return _cleanup_on_error([path, npz], run)

    def _zip(self, npz: Path, staged: list[Path], shape: Shape, dtype: np.dtype) -> None:
        """``np.savez_compressed(npz, coords=..., values=...)``, streamed from the staged raw files."""
        import zipfile

        index, values = _map(staged[0], np.dtype("<i8")), _map(staged[1], dtype)
        k = index.size
        with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            with zf.open("coords.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, _npy_header((k, 4), np.dtype(np.int64)))
                for at in range(0, k, self.chunk):
                    coords = np.unravel_index(np.asarray(index[at:at + self.chunk]), shape)
                    f.write(np.column_stack(coords).astype(np.int64, copy=False).tobytes())
            with zf.open("values.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, _npy_header((k,), dtype))
                for at in range(0, k, self.chunk):
                    f.write(np.ascontiguousarray(values[at:at + self.chunk]).tobytes())
        del index, values  # close the maps before the staged files are removed

    def read(self, path: Path, shape: Shape, dtype: Any, rows: int | None = None) -> Iterator[Block]:
        import zipfile

        path, dtype = Path(path), np.dtype(dtype)
        small = np.load(path, mmap_mode="r")
        if small.shape != tuple(shape) or small.dtype != np.uint8:
            raise StempressError(f"{path}: holds {small.dtype} {small.shape}, expected uint8 {tuple(shape)}; "
                                 "give the shape it was written with")
        row_size = int(np.prod(shape[1:]))
        step = block_rows(shape, dtype, rows=rows)
        with zipfile.ZipFile(self.side_file(path)) as zf, zf.open("coords.npy") as fc, zf.open("values.npy") as fv:
            overflows = self._overflows(fc, fv, path, shape, dtype)
            flat, vals = np.empty(0, np.int64), np.empty(0, dtype)
            for start, stop in row_spans(shape[0], step):
                out = np.array(small[start:stop], dtype=dtype)
                while (flat.size == 0 or flat[-1] < stop * row_size) and (more := next(overflows, None)):
                    flat, vals = np.concatenate([flat, more[0]]), np.concatenate([vals, more[1]])
                cut = int(np.searchsorted(flat, stop * row_size))
                out.reshape(-1)[flat[:cut] - start * row_size] = vals[:cut]
                flat, vals = flat[cut:], vals[cut:]
                yield Block(start, out)

    def _overflows(self, fc: IO[bytes], fv: IO[bytes], path: Path, shape: Shape, dtype: np.dtype
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The overflow map in chunks: flat indices (ascending) and their values."""
        k = _stream_header(fc, (4,), np.dtype(np.int64), path)
        if _stream_header(fv, (), dtype, path) != k:
            raise StempressError(f"{path}: overflow coordinates and values differ in length; rewrite the file")
        for at in range(0, k, self.chunk):
            n = min(self.chunk, k - at)
            coords = np.frombuffer(_read_exact(fc, n * 32, str(path)), dtype=np.int64).reshape(n, 4)
            values = np.frombuffer(_read_exact(fv, n * dtype.itemsize, str(path)), dtype=dtype)
            yield np.ravel_multi_index(tuple(coords.T), shape), values


def _stream_header(f: IO[bytes], tail: tuple[int, ...], dtype: np.dtype, path: Path) -> int:
    """Read an ``.npy`` header from a stream; the array's length, refused unless shaped (k, *tail) of dtype."""
    np.lib.format.read_magic(f)
    got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
    if tuple(got_shape[1:]) != tail or got_dtype != dtype or fortran:
        raise StempressError(f"{path}: holds an overflow map of {got_dtype} {got_shape}, not {dtype} (k, "
                             f"{', '.join(map(str, tail))}); give the dtype it was written with")
    return int(got_shape[0])


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    """Memory-map a raw side file (an empty file cannot be mapped, so it becomes an empty array)."""
    if path.stat().st_size == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class SimpleGzip:
    """The array as ``.npy`` through Python's gzip, level 9: the bytes of ``np.save`` into ``gzip.open``, with
    the name the study's file gives the gzip header (``simple_gzip.npy``), so only the header's time differs."""

    name = "simple_gzip"
    suffix = ".npy.gz"
    compresslevel = 9
    #: The name inside the gzip header of the study's ``simple_gzip.npy.gz``.
    header_name = "simple_gzip.npy"

    def write(self, path: Path, blocks: Iterable[Block], shape: Shape, dtype: Any) -> list[Path]:
        path, dtype = Path(path), np.dtype(dtype)

        def run() -> None:
            with open(path, "wb") as raw, gzip.GzipFile(self.header_name, "wb", self.compresslevel, raw) as f:
                np.lib.format.write_array_header_1_0(f, _npy_header(shape, dtype))
                for block in _checked(blocks, shape, dtype, self.name):
                    f.write(block.data.reshape(-1).view(np.uint8).data)

        return _cleanup_on_error([path], run)

    def read(self, path: Path, shape: Shape, dtype: Any, rows: int | None = None) -> Iterator[Block]:
        path, dtype = Path(path), np.dtype(dtype)
        with gzip.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            got_shape, fortran, got_dtype = reader(f)
            if tuple(got_shape) != tuple(shape) or got_dtype != dtype or fortran:
                raise StempressError(f"{path}: holds {got_dtype} {got_shape}, expected {dtype} "
                                     f"{tuple(shape)}; give the shape and dtype it was written with")
            row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
            step = block_rows(shape, dtype, rows=rows)
            for start, stop in row_spans(shape[0], step):
                buf = _read_exact(f, (stop - start) * row_bytes, str(path))
                yield Block(start, np.frombuffer(buf, dtype=dtype).reshape(stop - start, *shape[1:]))


class RawCsrEvents:
    """Counted electrons as events (pixel index, count per scan position) in LiberTEM's raw_csr layout.

    Why in the catalog: the event list is the representation counting detectors produce and LiberTEM reads
    directly; measuring it beside the HDF5 codecs shows what sparsity alone buys before any entropy coding.
    """

    name = "events_raw_csr"
    suffix = ".toml"

    def write(self, path: Path, blocks: Iterable[Block], shape: Shape, dtype: Any) -> list[Path]:
        from stempress.data.events import check_counts_dtype, events_from_block
        from stempress.events.libertem import raw_csr_files, write_raw_csr_events

        path, dtype = Path(path), np.dtype(dtype)
        check_counts_dtype(dtype, self.name)
        events = (events_from_block(b, where=self.name) for b in _checked(blocks, shape, dtype, self.name))
        write_raw_csr_events(events, path, shape, dtype, force=True)  # atomic: all four files or none
        return [path, *raw_csr_files(path).values()]

    def read(self, path: Path, shape: Shape, dtype: Any, rows: int | None = None) -> Iterator[Block]:
        from stempress.data.raw_csr import RawCsrSource

        dtype = np.dtype(dtype)
        source = RawCsrSource(path)
        try:
            if tuple(source.shape) != tuple(shape) or source.dtype != dtype:
                raise StempressError(f"{path}: holds {source.shape} {source.dtype}, not {tuple(shape)} {dtype}; "
                                     "give the shape and dtype it was written with")
            yield from iter_blocks(source, block_rows(shape, dtype, rows=rows))
        finally:
            source.close()


# ------------------------------------------------------------------------------------------ the study's versions

#: What the study's script times for each baseline (its write_time / read_time columns).
_STUDY_TIMING = {
    "sparse_csr": "the study times only pickle.dump as the write (building the matrices is left out) and, as "
                  "the read, unpickling with only 2 frames made dense; ours time building and pickling, and "
                  "unpickling with every frame made dense and verified",
    "uint8_overflow": "the study times np.save and np.savez_compressed as the write (the conversion is left "
                      "out) and does not time a read; ours time the conversion and the read",
    "simple_gzip": "the study does not time the read; ours does",
}


def study_difference(name: str, dtype: Any) -> str | None:
    """How our baseline ``name`` differs from the study's on a cube of ``dtype``, in one sentence a report can
    show beside the number (None for methods the study did not run outside HDF5)."""
    if name not in _STUDY_TIMING:
        return None
    dtype = np.dtype(dtype)
    counts = dtype.kind in "bu"  # non-negative integers: what the study's casts were made for
    if name == "sparse_csr":
        if csr_value_dtype(dtype) == np.uint16:
            file = ("same file as the study's (one pickled list of CSR matrices with uint16 values; one list per "
                    "64 MiB of CSR arrays on larger cubes, a few hundred bytes each)")
        else:
            lost = "fractions, signs and values above 65535" if dtype.kind == "f" else \
                "values above 65535" if counts else "negative values and values above 65535"
            file = (f"the study casts values to uint16, which loses {lost} of this {dtype} cube; ours keeps "
                    f"{dtype} values, lossless, so its file differs")
    elif name == "uint8_overflow":
        if counts:
            file = ("same files as the study's (uint8 .npy with 255 marking values >= 255, and their zip-compressed "
                    "map) apart from the zip's time stamps")
        else:
            lost = "fractions and negative values" if dtype.kind == "f" else "negative values"
            file = (f"the study's clip to 0-254 loses the {lost} of this {dtype} cube; ours maps every value "
                    "uint8 cannot hold exactly, lossless, so its file differs")
    else:
        file = "same bytes as the study's (np.save into gzip level 9) apart from the gzip header's time"
    return f"{file}; {_STUDY_TIMING[name]}."


#: The file-stored codecs by catalog name.
def _file_formats() -> dict[str, FileFormat]:
    from stempress.data.entropy import EntropyCodedFormat  # counted-electron code; constriction loads lazily

    return {f.name: f for f in (SparseCSR(), Uint8Overflow(), SimpleGzip(), RawCsrEvents(), EntropyCodedFormat())}


FILE_FORMATS: dict[str, FileFormat] = _file_formats()


def file_format(codec: Codec | str) -> FileFormat:
    """The writer/reader for a file-stored codec (a :class:`Codec` or its name)."""
    codec = get_codec(codec) if isinstance(codec, str) else codec
    if codec.name not in FILE_FORMATS:
        raise StempressError(f"codec {codec.name!r} is stored in HDF5, not as a file; "
                             "write it with h5py using codec.h5_kwargs()")
    return FILE_FORMATS[codec.name]
