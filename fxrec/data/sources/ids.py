"""Turning source values into int64 ids and choosing embedding-table sizes for them.

`batches.hash_rows` maps an id to row 1 + id mod (cardinality - 1), so a cardinality is good when the
ids a dataset actually has land in distinct rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

_INT63 = (1 << 63) - 1


def stable_hash(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """int64 ids (>= 0) for strings: the first 8 bytes of blake2b, the same on every machine and run.

    Only the distinct values are hashed in Python (a few per feature); rows are mapped with Arrow.
    Nulls hash like the empty string.
    """
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    encoded = array.cast(pa.string()).fill_null("").dictionary_encode()
    codes = [
        int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") & _INT63
        for s in encoded.dictionary.to_pylist()
    ]
    lookup = np.asarray(codes, dtype=np.int64)
    return lookup[encoded.indices.to_numpy(zero_copy_only=False)]


def dense_id_cardinality(ids: np.ndarray) -> int:
    """Cardinality that keeps non-negative ids 0..max in distinct rows: max + 2."""
    return int(ids.max(initial=0)) + 2


def hashed_cardinality(ids: np.ndarray, max_rows: int = 1 << 16, chunk: int = 512) -> int:
    """Smallest cardinality <= max_rows + 1 whose rows keep the distinct `ids` apart.

    Searches table sizes k+1, k+2, ... (k distinct ids) a chunk at a time with one vectorised check
    per chunk; if no size up to `max_rows` is collision-free, returns max_rows + 1 and some ids share
    a row, as with any hashing trick.
    """
    distinct = np.unique(ids.astype(np.int64))
    start = max(len(distinct) + 1, 2)
    for first in range(start, max_rows + 2, chunk):
        sizes = np.arange(first, min(first + chunk, max_rows + 2), dtype=np.int64)
        rows = np.sort(distinct[:, None] % (sizes - 1)[None, :], axis=0)
        clean = ~(np.diff(rows, axis=0) == 0).any(axis=0)
        if clean.any():
            return int(sizes[np.argmax(clean)])
    return max_rows + 1
