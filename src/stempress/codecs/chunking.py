"""Chunk shapes: the study's three named chunkings, or an explicit shape, always capped to the cube."""

from __future__ import annotations

from collections.abc import Sequence

from stempress.errors import StempressError

#: The study's chunkings as (scan_y, scan_x, det_y cap, det_x cap); ``None`` means the full detector axis.
PAPER_CHUNKINGS: dict[str, tuple[int, int, int | None, int | None]] = {
    "real_space": (32, 32, 256, 256),
    "balanced": (16, 16, 128, 128),
    "single_frame": (1, 1, None, None),
}


def chunk_shape(chunking: str | Sequence[int], shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Resolve a chunking name or explicit shape for a cube, each axis capped at the cube's size."""
    if isinstance(chunking, str):
        if chunking not in PAPER_CHUNKINGS:
            parsed = parse_chunk_shape(chunking)
            if parsed is None:
                raise StempressError(
                    f"unknown chunking {chunking!r}; use one of {', '.join(PAPER_CHUNKINGS)} "
                    "or an explicit shape like 16x16x128x128"
                )
            chunking = parsed
        else:
            template = PAPER_CHUNKINGS[chunking]
            return tuple(  # type: ignore[return-value]
                int(n) if cap is None else min(int(cap), int(n)) for cap, n in zip(template, shape, strict=True)
            )
    dims = tuple(int(c) for c in chunking)
    if len(dims) != 4 or any(c < 1 for c in dims):
        raise StempressError(f"chunk shape {dims} must have 4 positive sizes, like 16x16x128x128")
    return tuple(min(c, int(n)) for c, n in zip(dims, shape, strict=True))  # type: ignore[return-value]


def parse_chunk_shape(text: str) -> tuple[int, ...] | None:
    """``'16x16x128x128'`` or ``'16,16,128,128'`` -> tuple; ``None`` when it is not a shape."""
    parts = text.replace(",", "x").replace(" ", "").strip("()").split("x")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def chunking_label(chunking: str | Sequence[int]) -> str:
    """The name used in result tables: the study's name, or ``chunks_16x16x128x128``."""
    if isinstance(chunking, str) and chunking in PAPER_CHUNKINGS:
        return chunking
    dims = parse_chunk_shape(chunking) if isinstance(chunking, str) else tuple(chunking)
    if dims is None:
        chunk_shape(chunking, (1, 1, 1, 1))  # raises the user-facing error
    return "chunks_" + "x".join(str(d) for d in dims)  # type: ignore[union-attr]


def parse_chunkings(text: str) -> list[str | tuple[int, ...]]:
    """'paper' -> the study's three; otherwise names and shapes separated by commas or spaces."""
    if text.strip() == "paper":
        return list(PAPER_CHUNKINGS)
    chosen: list[str | tuple[int, ...]] = []
    for item in text.replace(";", " ").split():
        parts = [p for p in item.split(",") if p]
        if len(parts) > 1 and all(p.strip("()").isdigit() for p in parts):
            parts = [item]  # one shape written with commas: 16,16,128,128
        for part in parts:
            shape = parse_chunk_shape(part)
            chosen.append(shape if shape is not None else part)
    for chunking in chosen:
        chunk_shape(chunking, (1, 1, 1, 1))  # validate early with the user-facing error
    if not chosen:
        raise StempressError("--chunks is empty; use 'paper', names like balanced, or shapes like 16x16x128x128")
    return chosen
