"""Arrow columns to numpy from their raw buffers, without pyarrow.compute.

Importing pyarrow.compute costs 0.1-0.2 s (it builds a Python wrapper for every kernel), a sizable share of
a report that should take a second; and pa.array of Python values makes pyarrow import pandas, if installed.
These helpers read the buffers instead: null masks from the validity bitmap, values from the data buffer,
strings as codes (a dictionary column's indices: the vectorized readers read a Parquet file's string columns as
dictionaries; a plain string column, from an Arrow IPC file, is dictionary-encoded by pyarrow.compute).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NP = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
       pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.float64(): np.float64}


def null(col) -> np.ndarray:
    """True where the value is null."""
    n = len(col)
    if not col.null_count:
        return np.zeros(n, dtype=bool)
    bits = col.buffers()[0]
    off = col.offset
    valid = np.unpackbits(np.frombuffer(bits, dtype=np.uint8, count=(off + n + 7) // 8), bitorder="little")
    return ~valid[off:off + n].view(bool)


def null_at(col, idx: np.ndarray) -> np.ndarray:
    """``null(col)[idx]`` without unpacking the whole bitmap."""
    if not col.null_count:
        return np.zeros(len(idx), dtype=bool)
    bits = np.frombuffer(col.buffers()[0], dtype=np.uint8)
    k = idx + col.offset
    return (bits[k >> 3] >> (k & 7).astype(np.uint8)) & 1 == 0


def floats_at(col, idx: np.ndarray) -> np.ndarray:
    """``floats(col)[idx]``, converting only those rows."""
    v = raw(col, _NP[col.type])[idx].astype(np.float64)
    return np.where(null_at(col, idx), np.nan, v) if col.null_count else v


def raw(col, dtype) -> np.ndarray:
    """The values buffer (whatever sits in a null slot)."""
    buf = col.buffers()[1]
    return np.frombuffer(buf, dtype=dtype, count=col.offset + len(col))[col.offset:]


def ints(col, fill: int = -1) -> np.ndarray:
    v = raw(col, _NP[col.type]).astype(np.int64)
    return np.where(null(col), fill, v) if col.null_count else v


def floats(col) -> np.ndarray:
    """float64 with NaN for null."""
    v = raw(col, _NP[col.type]).astype(np.float64)
    return np.where(null(col), np.nan, v) if col.null_count else v


def codes(col) -> tuple[np.ndarray, list]:
    """(per row the index of its string in ``words``, -1 for null; ``words``) of a string or dictionary column,
    the words in the order they first occur (as pyarrow.compute.dictionary_encode gives them)."""
    c, words = _codes(col)
    first = [int(np.argmax(c == k)) if (c == k).any() else -1 for k in range(len(words))]   # few words
    order = sorted((f, k) for k, f in enumerate(first) if f >= 0)
    if [k for _, k in order] == list(range(len(words))):
        return c, words
    remap = np.full(len(words) + 1, -1, dtype=np.int64)
    remap[[k for _, k in order]] = np.arange(len(order))
    return remap[c], [words[k] for _, k in order]


def _codes(col) -> tuple[np.ndarray, list]:
    if pa.types.is_dictionary(col.type):
        c = raw(col.indices, _NP[col.indices.type]).astype(np.int64)
        if col.null_count:
            c[null(col)] = -1
        return c, col.dictionary.to_pylist()
    import pyarrow.compute as pc   # a plain string column (an Arrow IPC file): 0.1 s to import, once
    return _codes(pc.dictionary_encode(col))


def codes_in(col, names) -> np.ndarray:
    """Per row: the index of its string in ``names``, -1 for null or any other string."""
    if pa.types.is_dictionary(col.type):   # the stored indices looked up as they are (no int64 copy)
        words = col.dictionary.to_pylist()
        c = raw(col.indices, _NP[col.indices.type])
        if not len(c) or 0 <= int(c.min()) <= int(c.max()) < len(words):   # a null's slot may hold any value
            out = np.array([names.index(w) if w in names else -1 for w in words], dtype=np.int64)[c]
            if col.null_count:
                out[null(col)] = -1
            return out
    c, words = _codes(col)   # any order
    table = np.array([names.index(w) if w in names else -1 for w in words] + [-1], dtype=np.int64)
    return table[c]   # -1 indexes the trailing -1


def indices(rows) -> pa.Array:
    """An Arrow int64 array of row numbers, built from the numpy buffer."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def list_floats(col) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list<float64> column: (offsets, n + 1 of them into the values; the values, NaN for null; null per
    value). A null list spans no values (as Arrow writes it)."""
    vals = col.values
    return list_offsets(col), floats(vals), null(vals)


def list_offsets(col) -> np.ndarray:
    """A list column's offsets into its values (``col.values``: all of them, not sliced), n + 1 of them."""
    return np.frombuffer(col.buffers()[1], dtype=np.int32, count=col.offset + len(col) + 1)[col.offset:].astype(np.int64)


def list_items(off: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The positions in the values of the items of ``rows``' lists, in order."""
    lens = off[rows + 1] - off[rows]
    first = np.repeat(off[rows] - (np.cumsum(lens) - lens), lens)
    return first + np.arange(int(lens.sum()))


def gather_lists(off: np.ndarray, vals: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lists of ``rows`` as a matrix (rows x the longest), NaN past each list's end; and their lengths."""
    start, lens = off[rows], off[rows + 1] - off[rows]
    width = int(lens.max()) if len(lens) else 0
    col = np.arange(width)
    inside = col[None, :] < lens[:, None]
    pos = np.where(inside, start[:, None] + col[None, :], 0)
    out = np.where(inside, vals[pos] if len(vals) else np.nan, np.nan)
    return out.reshape(len(rows), width), lens
