"""Replay of a compact trace (Parquet, Arrow IPC, a rotated run's parts) from its row groups (replay_index.py):
after any seeks, the TUI's state has the same totals and bucket rows as the replay of the same trace as JSON
Lines."""

import glob
import os

import pytest

import cgwatch.replay as RP
import cgwatch.replay_index as RI
from cgwatch.convert import convert
from cgwatch.replay import ReplaySource
from cgwatch.tui.state import ViewState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "sample_traces", "*.jsonl")))


def _view(path, seeks):
    st = ViewState()
    s = ReplaySource(path, clock=lambda: 0.0, start_paused=True)
    s.start(st.fold, lambda _: None)
    assert (s._index is not None) == (not str(path).endswith(".jsonl"))
    if s._index is not None:
        s._index._thread.join()
    for target in seeks:
        s.send("seek", target - s.pos)
    out = (st.totals(), st.bucket_rows(), st.steps, st.log_seq > 0, s.duration_s)
    s.close()
    return out


def _parts(path: str, out: str, ext: str, n: int = 3) -> str:
    """The trace as a rotated run's n parts (each its own file, the header with ``part``); the first part's path."""
    from cgwatch import columnar as C
    from cgwatch.trace import iter_records, read_header
    head, recs = read_header(path), list(iter_records(path))
    cut = [len(recs) * k // n for k in range(n + 1)]
    for k in range(n):
        C.write_table(f"{out}.{k:03d}{ext}", {**head, "part": k}, [recs[cut[k]:cut[k + 1]]], part=k)
    return f"{out}.000{ext}"


@pytest.mark.parametrize("kind", ["parquet", "arrows", "parts.parquet", "parts.arrows"])
@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_seeks_give_the_jsonl_replays_view(path, kind, tmp_path, monkeypatch):
    monkeypatch.setattr(RI, "CHECKPOINT_ROWS", 700)    # small, so that the samples cross checkpoints
    monkeypatch.setattr(RP, "SNAPSHOT_ROWS", 500)
    monkeypatch.setattr(RI, "SNAPSHOT_ROWS", 300)
    if kind.startswith("parts"):   # a rotated run: the parts' row groups (or stream batches) in one index
        pq = _parts(path, str(tmp_path / "r"), kind[len("parts"):])
    else:
        pq = str(tmp_path / f"t.{kind}")
        convert(path, pq)
    assert _view(pq, [])[4] == _view(path, [])[4]
    for seeks in ([1e9], [12.0], [30.0, 10.0], [1e9, 5.0, 25.0], [0.5]):
        assert _view(pq, seeks) == _view(path, seeks)


def test_next_mark_in_a_parquet_trace(tmp_path):
    pq = str(tmp_path / "t.parquet")
    convert(os.path.join(ROOT, "sample_traces", "llama1b_poisson_h100.jsonl"), pq)
    s = ReplaySource(pq, clock=lambda: 0.0, start_paused=True)
    got = []
    s.start(got.append, lambda _: None)
    s.send("next", "mark")
    assert abs(s.pos - 35.513) < 0.01      # the sample's one mark (README)
    s.close()


@pytest.mark.parametrize("kind", ["parquet", "arrows", "table1.arrows"])
def test_tensor_parallel_seeks_give_the_jsonl_replays_view(kind, tmp_path, monkeypatch):
    """A TP trace's rank_ms and gpus columns (a table-1 file: as JSON rows) fold into the view's per-rank rows
    as the JSON Lines replay folds them."""
    from test_fold import synthetic
    from test_trace_format_tp import _as_table_1, _jsonl
    monkeypatch.setattr(RI, "CHECKPOINT_ROWS", 700)
    monkeypatch.setattr(RP, "SNAPSHOT_ROWS", 500)
    monkeypatch.setattr(RI, "SNAPSHOT_ROWS", 300)
    jl = _jsonl(tmp_path / "tp.jsonl", synthetic(3, n=3000, bad=False, tp=True))
    out = str(tmp_path / f"t.{kind}")
    if kind.startswith("table1"):
        _as_table_1(jl, out)
    else:
        convert(jl, out)

    def view(path, seeks):
        st = ViewState()
        s = ReplaySource(path, clock=lambda: 0.0, start_paused=True)
        s.start(st.fold, lambda _: None)
        if s._index is not None:
            s._index._thread.join()
        for target in seeks:
            s.send("seek", target - s.pos)
        got = (st.totals(), st.bucket_rows(), st.steps, st.rank_rows())
        s.close()
        return got
    for seeks in ([1e9], [4.0], [6.0, 2.0], [0.3]):
        a, b = view(out, seeks), view(jl, seeks)
        assert a == b and (a[3] or seeks == [0.3])


def test_a_seek_while_indexing_answers_at_once_then_the_whole_aggregate_follows(tmp_path, monkeypatch):
    """The background fold held back after its first row group: a seek to the end is answered at once (it does
    not wait for the index), with the totals the index has so far and a status that says so; once the index
    has passed the position, poll() sends the whole aggregate: the JSON Lines replay's view."""
    import threading
    import time

    from cgwatch import columnar as C
    monkeypatch.setattr(RI, "CHECKPOINT_ROWS", 700)
    monkeypatch.setattr(RP, "SNAPSHOT_ROWS", 500)
    monkeypatch.setattr(C, "COMPACT_ROWS", 500)
    src = os.path.join(ROOT, "sample_traces", "llama1b_poisson_h100.jsonl")
    pq = str(tmp_path / "t.parquet")
    convert(src, pq)
    gate = threading.Event()
    real = RI.CompactRecords._groups_read

    def gated(self, pf):
        for k, item in enumerate(real(self, pf)):
            if k == 2:
                gate.wait()
            yield item
    monkeypatch.setattr(RI.CompactRecords, "_groups_read", gated)
    st, statuses = ViewState(), []
    s = ReplaySource(pq, clock=lambda: 0.0, start_paused=True)
    try:
        s.start(st.fold, statuses.append)
        for _ in range(6000):    # the fold's first checkpoint (row 700: the two groups before the gate)
            if s._index._built:
                break
            time.sleep(0.01)
        assert s._index._built == 700
        seek = threading.Thread(target=s.send, args=("seek", 1e9))
        seek.start()
        seek.join(timeout=120)   # the old seek waited for the index: held back, it would never return
        assert not seek.is_alive() and s._index._thread.is_alive()
        assert "totals: indexing 13%" in statuses[-1]["text"] and s._partial == {"records": 700, "of": 5055}
        partial = st.steps
        s.poll()                 # the index still held back: nothing changes
        assert st.steps == partial and "totals: indexing" in statuses[-1]["text"]
    finally:
        gate.set()
    s._index._thread.join()
    s.poll()
    assert "indexing" not in statuses[-1]["text"]
    assert (st.totals(), st.bucket_rows(), st.steps) == _view(src, [1e9])[:3]
    assert 0 < partial < st.steps
    s.close()
