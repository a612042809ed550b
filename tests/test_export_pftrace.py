"""``cgwatch export --format pftrace``: read back with Perfetto's own protos (tests/pftrace_read.py), it draws what
the JSON export draws: the same slices on the same tracks (names, durations, args; starts within a µs), the same
counter values, every track described and every name interned before use, no slice left open, slices of a
track never touching; from JSON Lines and from compact traces alike."""

import json
import math
import sys

import numpy as np
import pytest

from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.convert import convert
from cgwatch.export import SAMPLE_COUNTERS, TRACKS

from pftrace_read import read
from test_export_fast import _edge_records, _write
from test_fold import synthetic


def _export(src, fmt, out, capsys) -> bytes:
    assert main(["export", str(src), "--format", fmt, "-o", str(out)]) == 0
    capsys.readouterr()
    return out.read_bytes()


def _json_view(doc: dict) -> tuple[dict, dict]:
    """The JSON export's slices per track name and counter values per series (named as the pftrace names
    them; times in ns, values as the pftrace stores them)."""
    tids = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    slices, counters = {}, {}
    for e in doc["traceEvents"]:
        if e["ph"] in ("X", "i"):
            slices.setdefault(tids[e["tid"]], []).append(
                {"name": e["name"], "ts": e["ts"] * 1000, "dur": e.get("dur", 0) * 1000, "args": e["args"]})
        elif e["ph"] == "C":
            for key, v in e["args"].items():
                counters.setdefault(_counter_name(e["name"], key), []).append((e["ts"] * 1000, v))
    return slices, counters


def _counter_name(name: str, key: str) -> str:
    if name in ("host launch", "GPU gap"):
        return name
    if name == "rank step ms":
        return f"{key} step"
    if name == "rank skew":
        return name
    return f"{name} {key}"


def _scale(name: str, v: float) -> float:
    """A JSON counter value as the pftrace stores it: times in integer ns."""
    if name in ("host launch", "GPU gap"):
        return round(v * 1000)
    if name.endswith(" step") or name == "rank skew":
        return round(v * 1e6)
    return v


def _plain(v):
    """A JSON arg as the pftrace holds it: nulls inside left out, an empty list or dict as its text."""
    if isinstance(v, (dict, list)) and not v:
        return json.dumps(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _same_drawing(got: dict, doc: dict) -> None:
    want_slices, want_counters = _json_view(doc)
    for track, want in want_slices.items():
        have = got["slices"].get(track, [])
        key = lambda s: (s["ts"] // 1000, s["name"])   # noqa: E731   (the µs: a slice may start 1 ns later)
        want, have = sorted(want, key=key), sorted(have, key=key)
        assert [s["name"] for s in have] == [s["name"] for s in want], track
        for h, w in zip(have, want):
            if w["ts"] < 0:   # a capture before the run's t = 0: cut at 0
                w = {**w, "ts": 0, "dur": max(w["ts"] + w["dur"], 0)}
            assert abs(h["ts"] - w["ts"]) <= 1000, (track, h, w)   # 1 ns a touching slice, < 1 µs
            assert abs(h["dur"] - w["dur"]) <= 1, (track, h, w)
            for k, v in h["args"].items():
                if k in w["args"] and k != "shifted_us":
                    assert v == _plain(w["args"][k]) or (isinstance(v, float) and math.isclose(v, w["args"][k])), (k, h, w)
    for track in (TRACKS[1], TRACKS[2]):   # host and GPU: one after the other, never touching
        s = sorted(got["slices"].get(track, []), key=lambda s: s["ts"])
        assert all(a["ts"] + a["dur"] < b["ts"] for a, b in zip(s, s[1:])), track
    for name, want in want_counters.items():
        have = sorted(got["counters"].get(name, []))
        assert [v for _, v in have] == pytest.approx([_scale(name, v) for _, v in sorted(want)]), name
    assert set(got["counters"]) == set(want_counters)


CASES = [("edge", None), ("s1", dict(seed=1, bad=True)), ("tp", dict(seed=3, bad=True, tp=True))]


def _edges() -> list[dict]:
    """test_export_fast's edge records, but a GPU time of 1e22 ms (past what int64 ns hold: drawn as 104 days,
    test_a_step_longer_than_int64_ns) made 1e9 ms (11.6 days)."""
    return [{**r, "gpu_ms": 1e9} if r.get("gpu_ms") == 1e22 else r for r in _edge_records()]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_pftrace_draws_what_the_json_draws(name, kw, tmp_path, capsys):
    recs = _edges() if kw is None else synthetic(n=1500, **kw)
    jl = tmp_path / "t.jsonl"
    _write(jl, recs)
    doc = json.loads(_export(jl, "perfetto", tmp_path / "t.json", capsys))
    got = read(_export(jl, "pftrace", tmp_path / "t.pftrace", capsys))
    assert got["process"] == "cgwatch: x on cpu"
    _same_drawing(got, doc)
    gpu = got["slices"].get(TRACKS[2], [])
    host = got["slices"][TRACKS[1]]
    assert gpu and all(len(s["flow_ends"]) == 1 and host[s["flow_ends"][0]]["args"]["i"] == s["args"]["i"]
                       for s in gpu)   # host -> GPU, the same step
    for ext in (".parquet", ".arrows"):   # a compact trace: the same drawing from its columns
        compact = tmp_path / f"t{ext}"
        convert(str(jl), str(compact))
        again = read(_export(compact, "pftrace", tmp_path / f"c{ext}.pftrace", capsys))
        assert again["slices"] == got["slices"] and again["counters"] == got["counters"], ext


def test_pftrace_of_the_samples(tmp_path, capsys):
    """The bundled real traces (H100, vLLM on an H200): as the JSON draws them, a fraction of its size."""
    for sample in ("llama1b_live_h100", "vllm026_llama1b_poisson_h200"):
        doc_bytes = _export(f"sample:{sample}", "perfetto", tmp_path / "s.json", capsys)
        data = _export(f"sample:{sample}", "pftrace", tmp_path / "s.pftrace", capsys)
        assert len(data) < len(doc_bytes) / 1.8
        got = read(data)
        _same_drawing(got, json.loads(doc_bytes))
        info = got["info"]
        assert info["ts"] == 0 and info["args"]["complete"] is True and info["args"]["model"] == "llama-1b"


def test_the_args_of_a_step(tmp_path, capsys):
    recs = [R.step(0, 1.0, 3, 4, 4, None, 250.5, 2.0, 3, rows=3, prompt_tokens=0),
            {**R.step(1, 1.01, 5, 8, None, R.REASON_PADDING, 300.0, None, 5, rows=7, phase=R.PHASE_MIXED,
                      prompt_tokens=2), "note": "odd"},
            {"type": "prefill", "t": 1.02, "i": 2, "requests": 2, "tokens": 40, "host_ms": 1.5}]
    jl = tmp_path / "a.jsonl"
    _write(jl, recs)
    got = read(_export(jl, "pftrace", tmp_path / "a.pftrace", capsys))
    host = sorted(got["slices"][TRACKS[1]], key=lambda s: s["ts"])
    assert [s["name"] for s in host] == ["graph b4", "eager b7 mixed (padding_ratio)", "prefill 2 req"]
    assert host[0]["args"] == {"i": 0, "batch": 3, "rows": 3, "padded": 1, "bucket": 4, "target": 4, "tokens": 3}
    assert host[0]["ts"] == 1_000_000_000 and host[0]["dur"] == 250_500
    assert host[1]["args"] == {"i": 1, "batch": 5, "rows": 7, "padded": 0, "target": 8, "reason": "padding_ratio",
                               "prompt_tokens": 2, "tokens": 5, "note": "odd"}   # a field beyond the schema too
    assert host[2]["args"] == {"i": 2, "requests": 2, "tokens": 40, "host_ms": 1.5}
    assert got["slices"][TRACKS[2]][0]["dur"] == 2_000_000
    assert dict(got["counters"]["batch padded"]) == {1_000_000_000: 1, 1_010_000_000: 0}
    assert "GPU gap" not in got["counters"]   # none measured: no series


def test_bad_rows_are_left_out_and_said(tmp_path, capsys):
    recs = synthetic(7, n=400, bad=True)
    jl = tmp_path / "b.jsonl"
    _write(jl, recs)
    assert main(["export", str(jl), "--format", "pftrace", "-o", str(tmp_path / "b.pftrace")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "records skipped (cannot be trusted)" in err and "-> " in err
    pq = tmp_path / "b.parquet"
    convert(str(jl), str(pq))
    assert main(["export", str(pq), "--format", "pftrace", "-o", str(tmp_path / "c.pftrace")]) == 0
    assert "records skipped (cannot be trusted)" in capsys.readouterr().err
    assert read((tmp_path / "b.pftrace").read_bytes())["slices"] == read((tmp_path / "c.pftrace").read_bytes())["slices"]


def test_default_name_and_stdout(tmp_path, capsys, monkeypatch):
    jl = tmp_path / "run.jsonl"
    _write(jl, synthetic(2, n=50, bad=False))
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(jl), "--format", "pftrace"]) == 0
    assert "-> run.pftrace" in capsys.readouterr().err
    data = (tmp_path / "run.pftrace").read_bytes()

    class Out:
        buffer = __import__("io").BytesIO()

        def flush(self):
            pass
    out = Out()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["export", str(jl), "--format", "pftrace", "-o", "-"]) == 0
    assert read(out.buffer.getvalue())["slices"] == read(data)["slices"]


def test_unknown_records_are_counted_not_drawn(tmp_path, capsys):
    recs = [R.step(0, 1.0, 1, 1, 1, None, 5.0, 1.0, 1), {"type": "future_kind", "t": 1.5, "x": 1},
            {"type": "end", "t": 2.0, "steps": 1, "outcome": "completed"}]
    jl = tmp_path / "u.jsonl"
    _write(jl, recs)
    assert main(["export", str(jl), "--format", "pftrace", "-o", str(tmp_path / "u.pftrace")]) == 0
    assert "1 records of unknown types left out" in capsys.readouterr().err


def test_a_step_longer_than_int64_ns(tmp_path, capsys):
    recs = [R.step(0, 1.0, 1, 1, 1, None, 5.0, 1e22, 1), R.step(1, 1.1, 1, 1, 1, None, 5.0, 1.0, 1)]
    jl = tmp_path / "l.jsonl"
    _write(jl, recs)
    gpu = read(_export(jl, "pftrace", tmp_path / "l.pftrace", capsys))["slices"][TRACKS[2]]
    assert [s["dur"] for s in gpu] == [1 << 53, 1_000_000] and gpu[1]["ts"] == (1 << 53) + 1_000_000_001


def test_sample_counters_keep_the_json_names():
    got = {f"{name} {key}" for name, key, _ in SAMPLE_COUNTERS.values()}
    assert "GPU util pct" in got and "host RSS MiB" in got


def test_rows_encode_what_protobuf_decodes():
    """protowire.Rows against the protobuf library: random messages with optional fields, strings of
    several lengths and padded varints decode to the values written, in order or grouped by shape."""
    from cgwatch.protowire import Rows
    P = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
    rng = np.random.default_rng(5)
    n = 500
    ts = rng.integers(0, 1 << 50, n)
    iv = rng.integers(-(1 << 40), 1 << 40, n)
    dv = rng.normal(size=n)
    has_i, has_s = rng.random(n) < 0.6, rng.random(n) < 0.5
    words = ["", "a", "graph b16", "é" * 40]
    codes = rng.integers(0, len(words), n)
    for ordered in (True, False):
        top = Rows(n)
        p = Rows(n)
        p.varint(8, ts)
        ev = Rows(n)
        ev.varint(9, 1)
        ev.string(23, codes, words, where=has_s)
        a = Rows(n)
        a.varint(1, 3)
        a.varint(4, iv)
        ev.message(4, a, where=has_i)
        b = Rows(n)
        b.double(5, dv)
        ev.message(4, b)
        p.message(11, ev)
        top.message(1, p)
        trace = P.Trace()
        trace.ParseFromString(top.tobytes(ordered))
        got = [(q.timestamp, q.track_event.name if q.track_event.HasField("name") else None,
                [(d.name_iid, d.int_value, d.double_value) for d in q.track_event.debug_annotations])
               for q in trace.packet]
        want = [(int(ts[k]), words[codes[k]] if has_s[k] else None,
                 ([(3, int(iv[k]), 0.0)] if has_i[k] else []) + [(0, 0, float(dv[k]))]) for k in range(n)]
        assert (got if ordered else sorted(got, key=repr)) == (want if ordered else sorted(want, key=repr))


def test_a_truncated_stream_and_a_part_set(tmp_path, capsys):
    """A recording cut short (an IPC stream, no end record) draws up to its last whole batch and says so; the
    parts of a rotated run draw as the one trace they make."""
    from cgwatch.columnar import StreamWriter
    from cgwatch.trace import TraceWriter
    recs = synthetic(5, n=1200, bad=False)
    path = tmp_path / "cut.arrows"
    w = StreamWriter(str(path), {"type": "header", "format": "cgwatch-trace", "version": 1}, flush_s=3600)
    for k, rec in enumerate(recs):
        w.write(rec)
        if k % 300 == 299:
            w.flush()
    w.close(compact=False)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 700])
    assert main(["export", str(path), "--format", "pftrace", "-o", str(tmp_path / "cut.pftrace")]) == 0
    assert "no end record: partial trace" in capsys.readouterr().err
    steps = read((tmp_path / "cut.pftrace").read_bytes())["slices"][TRACKS[1]]
    assert 0 < len([s for s in steps if s["name"].startswith(("graph", "eager"))]) < 1200
    jl = tmp_path / "whole.jsonl"
    _write(jl, recs)
    half = len(recs) // 2
    for k, part in enumerate((recs[:half], recs[half:])):
        with TraceWriter(tmp_path / f"r.{k:03d}.parquet", {"model": {"name": "x"}, "gpu": "cpu", "part": k}) as pw:
            for r in part:
                pw.write(r)
    whole = read(_export(jl, "pftrace", tmp_path / "w.pftrace", capsys))
    parts = read(_export(tmp_path / "r.000.parquet", "pftrace", tmp_path / "p.pftrace", capsys))
    assert parts["counters"] == whole["counters"]
    for track in (TRACKS[1], TRACKS[2], TRACKS[3]):
        assert parts["slices"][track] == whole["slices"][track], track
