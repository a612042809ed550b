"""The export of a compact trace from its columns (export_columnar.py) writes what the record-by-record path
writes for the same records as JSON Lines: the same bytes (Perfetto: but the source path in the metadata)."""

import json

import pytest

from cgwatch import columnar as C
from cgwatch import export_columnar, perfetto_columnar
from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.convert import convert
from cgwatch.trace import TraceWriter

from test_fold import synthetic


def _edge_records() -> list[dict]:
    """Values whose text is easy to get wrong: t below 1e-4 s (repr's exponent), t = 0, whole seconds, strings
    that need quoting, -0.0, huge and tiny floats, a step with an unknown field, a tensor-parallel step and a
    sample with per-GPU fields (both JSON rows), an old step without rows / runtime_mode / phase."""
    steps = [
        R.step(0, 0.0, 1, 1, 1, None, 0.0, None, 1),
        R.step(1, 0.00005, 2, 2, 2, None, 1e-07, 1e22, 2, rows=2, phase="weird", runtime_mode="odd"),
        R.step(2, 1.0, 3, 4, None, "a,b \"q\"", 12.5, -0.0, 3),
        {**R.step(3, 2.000001, 4, 4, 4, None, 99.99999999, 2.5, 4), "gap_us": 0.1},
        {**R.step(4, 2.5, 4, 4, 4, None, 5.0, 2.0, 4), "rank_ms": [2.0, None], "skew_ms": None, "plan_us": 7.5},
        {**R.step(5, 2.75, 5, 8, 8, None, 5.0, 2.0, 5), "note": "x"},
        {k: v for k, v in R.step(6, 3.0, 6, 8, 8, None, 5.0, 2.0, 6).items()
         if k not in ("rows", "runtime_mode", "phase", "prompt_tokens")},
        R.step(7, 3.5, 7, 8, None, "über", 5.0, 2.0, 7),
        R.step(8, 3.75, 1, 1, 1, None, -0.0, 0.0, 1),   # host_us -0.0: its slice lasts 0.0 (ns), its arg is -0.0
    ]
    sample = {"type": "sample", "t": 2.6, "gpu_util": 50, "power_w": 100.5,
              "gpus": [{"gpu": 0, "gpu_util": 50}, {"gpu": 1, "gpu_util": 40, "power_w": 90.0}]}
    return steps[:5] + [sample] + steps[5:] + [R.alert(3.6, "done"), R.event(R.EV_MARK, 3.7, text="m,1")]


def _tp_records() -> list[dict]:
    """Tensor-parallel steps held in columns, mixed with one-rank steps and steps kept as JSON: rank_ms of
    different lengths (none, empty, 1 to 4 ranks, 5 in a JSON row), null items and null lists, null or absent
    skew_ms / plan_us (the first column-held step has rank_ms and skew_ms, null, but no plan_us: the header's
    order is that of the keys as they come), floats whose text is easy to get wrong."""
    def step(k, **tp):
        return {**R.step(k, round(1.0 + k * 0.01, 6), 2, 2, 2, None, 10.5, 1.25, 2), **tp}
    recs = [
        step(0),
        {**step(1), "note": "a,b"},                                        # JSON: an odd field
        step(2, rank_ms=None, skew_ms=None),                              # no plan_us; present, null
        step(3, plan_us=7.25, rank_ms=[2.0, 2.5, None, 14406.0], skew_ms=14404.0),
        step(4, plan_us=None, rank_ms=None, skew_ms=None),
        step(5, rank_ms=[1.5, None], skew_ms=None),
        step(6, plan_us=0.1, rank_ms=[], skew_ms=None),
        step(7, plan_us=1e-05, rank_ms=[None, None], skew_ms=-0.0),
        {**R.step(8, 1.08, 2, 2, 2, None, 10.5, 1.25, 2), "rank_ms": [1.0, 2.0, 3.0, 4.0, 5.0], "plan_us": 3.0,
         "skew_ms": 4.0},                                                  # JSON: rank_ms before plan_us
        step(9, plan_us=1e16, rank_ms=[0.30000000000000004, 5e-324, 1e22], skew_ms=1e22),
        {"type": "sample", "t": 1.095, "gpu_util": 5},
        step(10, rank_ms=[123456789.125]),
        step(11, plan_us=2.5),
    ]
    return recs + [step(k, plan_us=round(0.5 * k, 2), rank_ms=[round(k / 7, 4), None if k % 5 == 0 else k * 0.5],
                        skew_ms=None if k % 5 == 0 else round(abs(k * 0.5 - k / 7), 4)) for k in range(12, 400)]


def _write(path, recs) -> None:
    with TraceWriter(path, {"model": {"name": "x"}, "gpu": "cpu"}) as w:
        for r in recs:
            w.write(r)


def _compact(tmp_path, recs, monkeypatch, name="t", ext=".parquet", rows=97) -> str:
    """The records as a compact trace of many small batches (``rows`` a row group)."""
    jl = tmp_path / f"{name}.jsonl"
    _write(jl, recs)
    out = str(tmp_path / f"{name}{ext}")
    monkeypatch.setattr(C, "COMPACT_ROWS", rows)
    convert(str(jl), out)
    return out


def _export(path, fmt, out, capsys) -> bytes:
    assert main(["export", str(path), "--format", fmt, "-o", str(out)]) == 0
    capsys.readouterr()
    data = out.read_bytes()
    if fmt == "perfetto":
        doc = json.loads(data)
        doc["metadata"].pop("source")
        return json.dumps(doc).encode()
    return data


CASES = [("edge", None), ("s1", dict(seed=1, bad=True)), ("s2", dict(seed=2, bad=False)),
         ("tp", dict(seed=3, bad=True, tp=True)), ("tpedge", None)]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("fmt", ["csv", "perfetto"])
def test_compact_export_equals_record_path(name, kw, fmt, tmp_path, capsys, monkeypatch):
    recs = {"edge": _edge_records, "tpedge": _tp_records}[name]() if kw is None else synthetic(n=1500, **kw)
    jl = tmp_path / "t.jsonl"
    _write(jl, recs)
    want = _export(jl, fmt, tmp_path / f"want.{fmt}", capsys)
    assert len(want) > 200
    used = []
    for mod, fn in ((export_columnar, "export_csv"), (perfetto_columnar, "export")):
        real = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda *a, _real=real, **k: used.append(1) or _real(*a, **k))
    for ext in (".parquet", ".arrows"):
        compact = tmp_path / f"t{ext}"
        convert(str(jl), str(compact))
        assert _export(compact, fmt, tmp_path / f"got{ext}.{fmt}", capsys) == want, ext
    # the columnar path wrote both; a CSV of steps out of order twice each (its one pass, then after the screen)
    assert len(used) == (4 if fmt == "csv" and kw and kw["bad"] else 2)


def test_a_record_later_than_the_window_takes_the_record_path(tmp_path, capsys):
    recs = [R.step(k, 1.0 + k, 1, 1, 1, None, 5.0, 1.0, 1) for k in range(30)]
    recs.append({"type": "sample", "t": 2.0, "gpu_util": 5})   # 27 s late: _InOrder counts it
    jl = tmp_path / "t.jsonl"
    _write(jl, recs)
    want = _export(jl, "perfetto", tmp_path / "want.json", capsys)
    convert(str(jl), str(tmp_path / "t.parquet"))
    assert main(["export", str(tmp_path / "t.parquet"), "--format", "perfetto", "-o", str(tmp_path / "g.json")]) == 0
    assert "records out of order" in capsys.readouterr().err
    assert _export(tmp_path / "t.parquet", "perfetto", tmp_path / "got.json", capsys) == want


def test_rotated_parts_export_as_one(tmp_path, capsys):
    recs = synthetic(4, n=1500, bad=False)
    jl = tmp_path / "t.jsonl"
    _write(jl, recs)
    want = _export(jl, "csv", tmp_path / "want.csv", capsys)
    half = len(recs) // 2
    for k, part in enumerate((recs[:half], recs[half:])):
        with TraceWriter(tmp_path / f"r.{k:03d}.parquet", {"model": {"name": "x"}, "gpu": "cpu", "part": k}) as w:
            for r in part:
                w.write(r)
    # each part has its own end record: the first one's is a record of the set like any other (a row)
    got = _export(tmp_path / "r.000.parquet", "csv", tmp_path / "got.csv", capsys)
    assert got == want


@pytest.mark.parametrize("fmt", ["csv", "perfetto"])
def test_a_run_of_days_exports_the_same(fmt, tmp_path, capsys):
    """t past 2**39 µs (6.4 days): the Perfetto steps go a row at a time (the float text built from the
    integers would not be repr's)."""
    from cgwatch import columnar as C
    recs = [R.step(k, round(600000.0 + k * 0.013, 6), 4, 4, 4, None, 50.25, 2.5, 4) for k in range(40)]
    recs.append({"type": "end", "t": 600001.0, "steps": 40, "outcome": "completed"})
    pq = tmp_path / "d.parquet"
    C.write_table(str(pq), {"type": "header", "format": "cgwatch-trace", "version": 1, "model": {"name": "x"}}, [recs])
    jl = tmp_path / "d.jsonl"
    convert(str(pq), str(jl))
    want = _export(jl, fmt, tmp_path / f"want.{fmt}", capsys)
    assert _export(pq, fmt, tmp_path / f"got.{fmt}", capsys) == want


@pytest.mark.parametrize("fmt", ["csv", "perfetto"])
def test_a_truncated_stream_exports_what_the_record_path_reads(fmt, tmp_path, capsys):
    """A recording cut short (an IPC stream, no end record): both paths read up to its last whole batch."""
    import io

    from cgwatch import export as E
    from cgwatch.columnar import StreamWriter
    path = tmp_path / "cut.arrows"
    w = StreamWriter(str(path), {"type": "header", "format": "cgwatch-trace", "version": 1}, flush_s=3600)
    for k, rec in enumerate(synthetic(5, n=1200, bad=False)):
        w.write(rec)
        if k % 300 == 299:
            w.flush()
    w.close(compact=False)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 700])   # the last batch cut
    skip, _, _ = E.screen_trace(str(path))
    buf = io.StringIO()
    if fmt == "csv":
        E.export_csv(str(path), buf, skip)
    else:
        E.export_perfetto(str(path), E.read_header(str(path)), buf, skip)
    want = buf.getvalue().encode()
    got = tmp_path / f"got.{fmt}"
    assert main(["export", str(path), "--format", fmt, "-o", str(got)]) == 0
    assert got.read_bytes() == want and len(want) > 1000


def test_the_summary_counts_the_columns_written(tmp_path, capsys):
    """A tensor-parallel trace's CSV has columns beyond the schema (plan_us, skew_ms, one a rank): the summary
    line counts what the header has, from JSON Lines and from the columns alike."""
    jl = tmp_path / "t.jsonl"
    _write(jl, synthetic(seed=3, n=300, bad=False, tp=True))
    pq = tmp_path / "t.parquet"
    convert(str(jl), str(pq))
    for src in (jl, pq):
        out = tmp_path / f"{src.suffix[1:]}.csv"
        assert main(["export", str(src), "--format", "csv", "-o", str(out)]) == 0
        columns = len(out.read_text().splitlines()[0].split(","))
        assert columns > 16 and f", {columns} columns" in capsys.readouterr().err, src


@pytest.mark.parametrize("sample,tp", [(None, False), (None, True), ("llama1b_poisson_h100", False),
                                       ("vllm026_llama1b_poisson_h200", False)])
def test_perfetto_in_small_batches_and_chunks_equals_record_path(sample, tp, tmp_path, capsys, monkeypatch):
    """The columnar JSON carries each track's end from chunk to chunk and batch to batch (7-row chunks, 50-row
    batches): the same events as the record path, on synthetic traces (one rank and tensor-parallel, per-GPU
    samples) and on real recordings whose rows come a little out of t order."""
    from cgwatch import columnar as C
    if sample is None:
        jl = tmp_path / "t.jsonl"
        _write(jl, synthetic(6, n=900, bad=False, tp=tp))
    else:
        from cgwatch.samples import resolve
        jl = resolve(f"sample:{sample}")
    want = _export(jl, "perfetto", tmp_path / "want.json", capsys)
    monkeypatch.setattr(C, "COMPACT_ROWS", 50)
    monkeypatch.setattr(perfetto_columnar, "CHUNK", 7)
    for ext in (".parquet", ".arrows"):
        compact = tmp_path / f"t{ext}"
        convert(str(jl), str(compact))
        assert _export(compact, "perfetto", tmp_path / f"got{ext}.json", capsys) == want, ext


def test_perfetto_slice_times_are_placed_in_whole_ns(tmp_path, capsys):
    """Slices are placed in integer ns: after a day of steps the times carry no float drift (a float sum of
    microseconds would write 86400000012.30001), and a slice that starts at the previous one's end says by
    how much it was shifted, to the ns."""
    recs = [R.step(k, round(86400.0 + k * 0.0123, 6), 1, 1, 1, None, 12.3 if k != 3 else 40000.1, 0.0123, 1)
            for k in range(6)]
    jl = tmp_path / "t.jsonl"
    _write(jl, recs)
    for path in (jl, tmp_path / "t.parquet"):
        if path.suffix == ".parquet":
            convert(str(jl), str(path))
        assert main(["export", str(path), "--format", "perfetto", "-o", str(tmp_path / "o.json")]) == 0
        capsys.readouterr()
        text = (tmp_path / "o.json").read_text()
        events = json.loads(text)["traceEvents"]
        host = [e for e in events if e.get("cat") == "step"]
        gpu = [e for e in events if e.get("cat") == "gpu"]
        assert [e["ts"] for e in host][:4] == [86400000000.0, 86400012300.0, 86400024600.0, 86400036900.0]
        assert host[4]["ts"] == 86400036900.0 + 40000.1 and host[4]["args"]["shifted_us"] == 27700.1
        assert all(len(repr(e["ts"]).split(".")[1]) <= 3 for e in host + gpu)
        assert all(b["ts"] >= a["ts"] + a["dur"] for a, b in zip(gpu, gpu[1:]))   # the GPU track in order
