"""Which codec a live stream's archive gets when the user names none.

``blosc_zstd`` (the default everywhere) for every stream but a 1-bit one: a Merlin at counter depth 1 sends
frames of 0/1 counts, held as uint8, and zstd over byte-shuffled 0/1 bytes costs ~430 us of CPU per 256x256
frame, the receiver's largest cost by far. Bit shuffle turns such a chunk into one plane of hits and seven
planes of zeros, which LZ4 stores about as small (ratio ~11 against ~13 on sparse frames) at ~46 us per frame
(benchmarks/live_cpu_profile.py, --codec-table). It is still Blosc1 (filter 32001, as blosc_zstd): whatever reads
the default archive reads this one, and it decodes to the same 0/1 counts. A codec the user names always wins."""

from __future__ import annotations

from typing import Any

import numpy as np

#: The archive codec of a 1-bit stream when the user names none.
ONE_BIT_CODEC = "blosc_lz4_bitshuffle"


def one_bit(metadata: dict[str, Any], dtype: np.dtype) -> bool:
    """The stream's frames are 1-bit counts: counter depth 1 (Merlin's frame or acquisition header), uint8."""
    return metadata.get("counter_depth") == 1 and np.dtype(dtype) == np.uint8


def stream_codec(metadata: dict[str, Any], dtype: np.dtype) -> tuple[str, str] | None:
    """(codec name, why: a line for the summary and the archive's provenance) for a stream whose user named no
    codec and whose frames want another than the usual default; None: the usual default."""
    if one_bit(metadata, dtype):
        return ONE_BIT_CODEC, (f"archive codec {ONE_BIT_CODEC}: the default for 1-bit streams (counter depth 1; "
                               "about 9x less CPU per frame than blosc_zstd at a similar ratio, lossless); "
                               "--codec chooses another")
    return None
