"""Codecs: one class per codec family, their registry, the catalog of lossless methods, the study's non-HDF5
baselines, and chunk shapes."""

from stempress.codecs.baselines import FILE_FORMATS, FileFormat, file_format
from stempress.codecs.catalog import CATALOG, EXCLUDED, SETS, Codec, get_codec, select_codecs
from stempress.codecs.chunking import PAPER_CHUNKINGS, chunk_shape, chunking_label, parse_chunk_shape
from stempress.codecs.registry import codec_from_config, codec_from_pipeline

__all__ = [
    "CATALOG",
    "EXCLUDED",
    "FILE_FORMATS",
    "PAPER_CHUNKINGS",
    "SETS",
    "Codec",
    "FileFormat",
    "chunk_shape",
    "chunking_label",
    "codec_from_config",
    "codec_from_pipeline",
    "file_format",
    "get_codec",
    "parse_chunk_shape",
    "select_codecs",
]
