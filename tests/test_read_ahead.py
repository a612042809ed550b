"""read_ahead.ahead: the items in order, each computed in a worker thread one ahead; an exception comes out
where its item would; closing early stops asking for more."""
import threading

import pytest

from cgwatch.read_ahead import ahead


def test_order_and_the_worker_thread():
    where = []

    def items():
        for k in range(50):
            where.append(threading.current_thread() is threading.main_thread())
            yield k
    assert list(ahead(items())) == list(range(50))
    assert not any(where)


def test_an_exception_comes_out_in_place():
    def items():
        yield 1
        yield 2
        raise ValueError("damaged row group")
    got = []
    with pytest.raises(ValueError, match="damaged"):
        for x in ahead(items()):
            got.append(x)
    assert got == [1, 2]


def test_closing_early_reads_at_most_one_more():
    made = []

    def items():
        for k in range(100):
            made.append(k)
            yield k
    it = ahead(items())
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert len(made) <= 4
