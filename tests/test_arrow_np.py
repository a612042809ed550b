"""arrow_np.py: Arrow columns to numpy from their buffers give what pyarrow itself says (nulls, offsets,
dictionary and plain string columns, codes in first-occurrence order)."""

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cgwatch import arrow_np as A


def test_codes_and_nulls_match_pyarrow():
    rnd = random.Random(1)
    words = ["graph", "eager", "", "a\x00", "a", "über", "x" * 30, None]
    for _ in range(300):
        n = rnd.randint(0, 50)
        arr = pa.array([rnd.choice(words) for _ in range(n)], pa.string())
        off = rnd.randint(0, n)
        for col in (arr.slice(off), arr, pc.dictionary_encode(arr).slice(off), arr.slice(off, max(0, n - off - 2))):
            codes, got_words = A.codes(col)
            assert [None if k < 0 else got_words[k] for k in codes] == col.to_pylist()
            plain = col.dictionary_decode() if pa.types.is_dictionary(col.type) else col
            assert got_words == pc.dictionary_encode(plain).dictionary.to_pylist()   # first occurrence order
            assert (A.null(col) == np.array(col.is_null().to_pylist(), dtype=bool)).all()
            idx = np.array(sorted(rnd.sample(range(len(col)), min(len(col), 5))), dtype=np.int64)
            assert (A.null_at(col, idx) == A.null(col)[idx]).all()


def test_ints_and_floats_with_offsets():
    ints = pa.array([1, None, -3, 2 ** 40, None, 7], pa.int64()).slice(1)
    assert A.ints(ints, -9).tolist() == [-9, -3, 2 ** 40, -9, 7]
    floats = pa.array([0.5, None, -0.0, 1e300], pa.float64()).slice(1)
    got = A.floats(floats)
    assert np.isnan(got[0]) and got[1:].tolist() == [-0.0, 1e300]
    assert np.isnan(A.floats_at(floats, np.array([0, 2]))[0]) and A.floats_at(floats, np.array([2]))[0] == 1e300
