"""session.Session over a fake engine: sink order, the outcome, the end record on every path."""

import threading

import pytest

from cgwatch import records as R
from cgwatch.errors import CgwatchError
from cgwatch.session import Session, stopped_error
from cgwatch.trace import read_trace


class FakeEngine:
    def __init__(self, emit, fail_header=False):
        self.emit, self.fail_header = emit, fail_header
        self.closed, self.on_abort = 0, None

    def header(self):
        if self.fail_header:
            raise CgwatchError("no header")
        return {"model": {"name": "fake"}, "gpu": "cpu"}

    def now(self):
        return 1.5

    def run(self, steps):
        for i in range(steps):
            self.emit(R.step(i, 0.1 * i, 1, 1, None, R.REASON_EAGER_MODE, 10.0, None, 1))

    def close(self):
        self.closed += 1
        return {"steps": 2, "tokens": 2, "duration_s": 1.5}


def test_a_run_ends_the_trace_and_closes_the_engine_once(tmp_path):
    path, seen = tmp_path / "t.jsonl", []
    with Session.open(FakeEngine, record=str(path)) as s:
        s.fanout.add(seen.append)   # a view: after the trace
        s.run(lambda: s.engine.run(2))
        assert s.end()["outcome"] == "completed"
    assert s.engine.closed == 1 and len(seen) == 2
    tr = read_trace(path)
    assert [r["i"] for r in tr.records] == [0, 1] and tr.end["outcome"] == "completed" and tr.end["steps"] == 2


def test_a_crash_alerts_and_ends_with_error(tmp_path):
    path = tmp_path / "t.jsonl"

    def crash():
        raise RuntimeError("boom\nmore")
    with pytest.raises(RuntimeError):
        with Session.open(FakeEngine, record=str(path), what="bench", end_fields={"bench": None}) as s:
            s.run(crash)
    tr = read_trace(path)
    assert tr.records[-1]["message"] == "bench stopped by RuntimeError: boom" and tr.end["outcome"] == "error"
    assert tr.end["bench"] is None
    assert str(stopped_error("bench", RuntimeError("boom\nmore"), "t.jsonl")) == \
        "bench stopped by RuntimeError: boom (trace so far: t.jsonl)"


def test_stop_and_ctrl_c_are_interrupted(tmp_path):
    stop = threading.Event()
    stop.set()
    with Session.open(FakeEngine) as s:
        s.run(lambda: None, stop)
    assert s.summary["outcome"] == "interrupted"

    def ctrl_c():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with Session.open(FakeEngine) as s:
            s.run(ctrl_c)
    assert s.summary["outcome"] == "interrupted"


def test_a_failed_open_closes_the_engine_and_the_daemon():
    built, closed = [], []

    class Daemon:
        def close(self):
            closed.append(True)

        def publish(self, rec):
            pass

    def build(emit):
        built.append(FakeEngine(emit, fail_header=True))
        return built[0]
    with pytest.raises(CgwatchError, match="no header"):
        Session.open(build, daemon=Daemon())
    assert built[0].closed == 1 and closed == [True]


def test_the_abort_hook_ends_the_trace_and_the_stream(tmp_path):
    path, published = tmp_path / "t.jsonl", []

    class Daemon:
        publish = staticmethod(published.append)

        def close(self):
            pass

    s = Session.open(FakeEngine, record=str(path), daemon=Daemon())
    s.engine.on_abort({"steps": 0, "outcome": "error", "reason": "rank 1 lost"})
    assert read_trace(path).end["reason"] == "rank 1 lost" and published[-1]["type"] == R.END
    s.close()


def test_a_prometheus_port_in_use_fails_before_the_engine_and_the_trace(tmp_path):
    """It failed after the model had loaded (minutes for a large one) and left a trace with an error end
    record at PATH, which the next run then refused to replace without --overwrite."""
    import socket
    built, path = [], tmp_path / "t.jsonl"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(CgwatchError, match="cannot serve metrics on 127.0.0.1:.*in use"):
            Session.open(lambda emit: built.append(FakeEngine(emit)) or built[-1], record=str(path),
                         prometheus=taken.getsockname()[1])
    assert built == [] and not path.exists()
    # a free port: served, with the header's labels once the engine exists
    with Session.open(FakeEngine, prometheus=0) as s:
        import urllib.request
        text = urllib.request.urlopen(s.metrics.url, timeout=10).read().decode()
        assert 'cgwatch_info{' in text and 'model="fake"' in text
