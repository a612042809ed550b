import pytest

from cgwatch import records as R
from cgwatch.engine.buckets import (Dispatch, DispatchTable, dispatch, effective_sizes, padding_ratio,
                                    parse_sizes)
from cgwatch.errors import CgwatchError

SIZES = [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("batch, target, bucket, reason", [
    (1, 1, 1, None), (2, 2, 2, None), (3, 4, 4, None), (5, 8, 8, None), (8, 8, 8, None),
    (9, 16, 16, None), (17, 32, 32, None), (33, 64, 64, None), (64, 64, 64, None),
    (65, None, None, R.REASON_OVER_MAX), (200, None, None, R.REASON_OVER_MAX),
])
def test_default_sizes_pad_to_next_bucket(batch, target, bucket, reason):
    assert dispatch(batch, SIZES) == Dispatch(target, bucket, reason)


@pytest.mark.parametrize("batch, bucket, reason", [
    (1, 1, None), (2, 64, R.REASON_PADDING),     # 62/64 padding
    (32, 64, None),                              # exactly 0.5 is allowed ("exceed" means >)
    (31, 64, R.REASON_PADDING), (64, 64, None),
])
def test_padding_ratio_sends_batch_eager(batch, bucket, reason):
    d = dispatch(batch, [1, 64], max_padding_ratio=0.5)
    assert d.target == bucket
    assert (d.bucket, d.reason) == ((bucket if reason is None else None), reason)


def test_padding_ratio_definition():
    assert padding_ratio(5, 8) == 3 / 8
    assert padding_ratio(8, 8) == 0


def test_failed_bucket_runs_eager_and_does_not_spill_to_next():
    d = dispatch(5, SIZES, failed={8})
    assert d == Dispatch(8, None, R.REASON_BUCKET_FAILED)
    assert dispatch(9, SIZES, failed={8}) == Dispatch(16, 16, None)


def test_reason_precedence():
    assert dispatch(5, SIZES, graph_mode=False).reason == R.REASON_EAGER_MODE
    assert dispatch(5, SIZES, graph_mode=False).target == 8
    assert dispatch(5, SIZES, cuda=False).reason == R.REASON_NO_CUDA
    assert dispatch(5, [], graph_mode=True) == Dispatch(None, None, R.REASON_NO_GRAPHS)
    assert dispatch(100, SIZES, failed={64}).reason == R.REASON_OVER_MAX
    assert dispatch(3, SIZES, failed={4}, max_padding_ratio=0.0).reason == R.REASON_BUCKET_FAILED


def test_table_matches_function_for_every_batch():
    for ratio in (0.0, 0.3, 0.5, 1.0):
        for failed in ((), (4,), (1, 64)):
            sizes = [1, 3, 4, 12, 64]
            t = DispatchTable(80, sizes, failed, ratio)
            for b in range(1, 81):
                assert t[b] == dispatch(b, sizes, failed, ratio)


def test_zero_ratio_only_exact_buckets():
    t = DispatchTable(64, SIZES, max_padding_ratio=0.0)
    graph = [b for b in range(1, 65) if t[b].bucket is not None]
    assert graph == SIZES


def test_parse_sizes():
    assert parse_sizes("8,1, 4,4") == [1, 4, 8]
    assert parse_sizes("1 2 4") == [1, 2, 4]   # spaces separate: not 124
    assert parse_sizes("8 16") == [8, 16] and parse_sizes("1, 2,\t4") == [1, 2, 4]
    for bad in ("a,b", "1,-2", "1;2", "0"):
        with pytest.raises(CgwatchError):
            parse_sizes(bad)


def test_effective_sizes_drops_above_caps():
    assert effective_sizes(SIZES, None, 16) == ([1, 2, 4, 8, 16], [32, 64])
    assert effective_sizes(SIZES, 8, 64) == ([1, 2, 4, 8], [16, 32, 64])
