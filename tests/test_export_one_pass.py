"""CSV and pftrace of a compact trace to a file are written in the pass that screens it (export._one_pass:
fold.Screening, slice_placement.Placer). That pass must write what the two passes write (the screen first,
then the export: export._two_passes, which stdout and the other formats take): the CSV byte for byte, the
pftrace the same drawing (its packets may come in another order: a slice is written once placed); where it
meets what needs the whole trace (steps out of order, a slice sorting before one already placed, a CSV header
made wider by a row the screen leaves out), it starts the file again from the two passes."""

import io

import numpy as np
import pytest

from cgwatch import columnar as C
from cgwatch import export as E
from cgwatch import records as R
from cgwatch.cli import main
from cgwatch.convert import convert
from cgwatch.fold import Screening, screen
from cgwatch.slice_placement import Placer, placement
from cgwatch.trace import open_trace, read_header

from pftrace_read import read
from test_export_fast import _compact
from test_fold import synthetic


def _both(path: str, fmt: str, tmp_path, monkeypatch) -> tuple[bytes, bytes, int]:
    """(the file ``cgwatch export`` writes, what the two passes write, how many times it took the two passes)."""
    calls = []
    two = E._two_passes
    monkeypatch.setattr(E, "_two_passes", lambda *a: calls.append(1) or two(*a))
    out = tmp_path / f"out.{fmt}"
    assert main(["export", path, "--format", fmt, "-o", str(out)]) == 0
    got = out.read_bytes()
    buf = io.BytesIO()
    f = buf if fmt == "pftrace" else io.TextIOWrapper(buf, encoding="utf-8", newline="")
    two(fmt, path, open_trace(path), read_header(path), f)
    f.flush()
    want = buf.getvalue()
    if fmt == "pftrace":   # the drawing: every slice, counter value and arg, as Perfetto reads them
        got, want = read(got), read(want)
    return got, want, len(calls)


@pytest.mark.parametrize("fmt", ["csv", "pftrace"])
@pytest.mark.parametrize("ext", [".parquet", ".arrows"])
@pytest.mark.parametrize("seed,tp", [(1, False), (2, True)])
def test_a_clean_trace_takes_one_pass_and_writes_what_two_passes_write(fmt, ext, seed, tp, tmp_path, monkeypatch,
                                                                       capsys):
    path = _compact(tmp_path, synthetic(seed, n=1200, bad=False, tp=tp), monkeypatch, ext=ext)
    got, want, two = _both(path, fmt, tmp_path, monkeypatch)
    assert two == 0 and got == want and len(got) > 2


@pytest.mark.parametrize("fmt", ["csv", "pftrace"])
def test_duplicates_and_steps_out_of_order_start_the_file_again(fmt, tmp_path, monkeypatch, capsys):
    path = _compact(tmp_path, synthetic(3, n=1200, bad=True), monkeypatch)
    got, want, two = _both(path, fmt, tmp_path, monkeypatch)
    assert two == 1 and got == want
    assert f"warning: skipped {screen(open_trace(path)).skipped} records" in capsys.readouterr().err


def test_a_slice_later_than_the_window_starts_the_pftrace_again(tmp_path, monkeypatch, capsys):
    """The steps are in order (the screen trusts its first pass), but a prefill comes 20 s late, past the
    Placer's window (REORDER_WINDOW_S): the slices it precedes are written already; only the whole trace's
    placement puts it (and what follows it) right. 2 s late: within the window, one pass."""
    for late, passes in ((20.0, 1), (2.0, 0)):
        recs = [R.step(k, 1.0 + 0.05 * k, 4, 4, 4, None, 300.0, 2.0, 4) for k in range(800)]
        recs.insert(700, {"type": "prefill", "t": 1.0 + 0.05 * 700 - late, "i": 9999, "requests": 2, "tokens": 40,
                          "host_ms": 1.5})
        path = _compact(tmp_path, recs, monkeypatch, name=f"l{passes}")
        got, want, two = _both(path, "pftrace", tmp_path, monkeypatch)
        assert two == passes and got == want
        got, want, two = _both(path, "csv", tmp_path, monkeypatch)   # no slices in a CSV: one pass
        assert two == 0 and got == want


def test_a_wider_header_from_a_row_left_out_starts_the_csv_again(tmp_path, monkeypatch, capsys):
    """A step kept as JSON for a field beyond the schema, which the screen leaves out (a negative host time):
    the one pass's header (from every row) has its column, the screened one must not."""
    recs = synthetic(5, n=600, bad=False)
    k = next(n for n, r in enumerate(recs) if r["type"] == R.STEP and n > 300)
    recs[k] = {**recs[k], "host_us": -1.0, "note": "x"}
    path = _compact(tmp_path, recs, monkeypatch)
    got, want, two = _both(path, "csv", tmp_path, monkeypatch)
    assert two == 1 and got == want and b"note" not in got.split(b"\n")[0]
    recs[k]["host_us"] = 5.0            # accepted: the column is there, in one pass
    path = _compact(tmp_path, recs, monkeypatch, name="u")
    got, want, two = _both(path, "csv", tmp_path, monkeypatch)
    assert two == 0 and got == want and b"note" in got.split(b"\n")[0]


@pytest.mark.parametrize("seed,bad", [(6, False), (7, True)])
def test_screening_a_batch_at_a_time_is_the_screen(seed, bad, tmp_path, monkeypatch):
    path = _compact(tmp_path, synthetic(seed, n=1500, bad=bad), monkeypatch)
    want = screen(open_trace(path))
    tr = open_trace(path)
    s = Screening(tr)
    verdicts = [s.batch(b) for b in tr.batches(dictionary=True)]
    assert s.trusted is not bad
    if bad:
        assert np.concatenate(verdicts).sum() < want.bad.sum()   # the duplicates need the second pass
        return
    got = s.done()
    assert np.array_equal(got.bad, want.bad) and got.warning == want.warning and got.skipped == want.skipped


def _timeline(seed: int, rows: int, past_a_batch_start: bool) -> list[dict]:
    """Random step, prefill and sample times, some prefills late (earlier than rows before them); with
    ``past_a_batch_start`` False, never earlier than the rows of the batches before theirs (``rows`` a batch)."""
    rng = np.random.default_rng(seed)
    recs, t, floor = [], 1.0, 0.0
    for i in range(2000):
        t = round(t + float(rng.uniform(0, 0.004)), 6)
        if rng.random() < 0.2:
            late = round(t - float(rng.uniform(0, 0.02)), 6) if rng.random() < 0.15 else t
            if len(recs) % rows == 0:
                floor = recs[-1]["t"] if recs else 0.0
            recs.append({"type": "prefill", "t": late if past_a_batch_start else max(late, floor), "i": i,
                         "requests": 1, "tokens": 8, "host_ms": round(float(rng.uniform(0, 3)), 3)})
        gpu = None if rng.random() < 0.1 else round(float(rng.uniform(0.5, 5)), 4)
        rec = R.step(i, t, 4, 4, 4, None, round(float(rng.uniform(10, 3000)), 2), gpu, 4)
        if rng.random() < 0.5:
            rec["gap_us"] = round(float(rng.uniform(0, 50)), 1)
        if len(recs) % rows == 0:
            floor = recs[-1]["t"] if recs else 0.0
        recs.append(rec)
    return recs


def _place(tr, bad, window_s: float):
    """The Placer over the trace: per row its host and GPU starts, and how many times each row was handed
    out; None where it gave up."""
    n = len(bad)
    host, gpu, seen = np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n, np.int64)
    p, base, units = Placer(window_s), 0, []
    for b in tr.batches(dictionary=True):
        got = p.batch(b, ~bad[base:base + b.num_rows], base)
        if got is None:
            return None
        units += got
        base += b.num_rows
    for b, at, mask, h, g in units + p.flush():
        rows = np.flatnonzero(mask)
        seen[at + rows] += 1
        host[at + rows], gpu[at + rows] = h[rows], g[rows]
    return host, gpu, seen


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rows", [61, 400])
@pytest.mark.parametrize("past", [False, True])
def test_placing_a_batch_at_a_time_is_placing_the_whole_trace(seed, rows, past, tmp_path, monkeypatch):
    """Where the Placer does not give up, its starts are placement's, each accepted row handed out once (its
    slices once placed), none of the rows left out; with a window shorter than how late a row comes, it gives
    up; with none at all, it places each slice as soon as it comes."""
    path = _compact(tmp_path, _timeline(seed, rows, past), monkeypatch, rows=rows)
    tr = open_trace(path)
    bad = screen(tr).bad
    host, gpu = placement(tr, bad)
    assert (host >= 0).sum() > 2000 and (gpu >= 0).sum() > 1500
    for window in (10.0, 0.05):   # late rows are at most 0.02 s late
        got = _place(tr, bad, window)
        assert got is not None
        assert np.array_equal(got[0], host) and np.array_equal(got[1], gpu)
        assert np.array_equal(got[2], (~bad).astype(np.int64))
    if past:   # a late prefill past a batch's start, no window: it gives up (61 rows a batch: surely)
        if rows == 61:
            assert _place(tr, bad, 0.0) is None
    else:
        got = _place(tr, bad, 0.0)
        assert got is not None and np.array_equal(got[0], host) and np.array_equal(got[1], gpu)


@pytest.mark.parametrize("sample", ["llama1b_poisson_h100", "llama1b_live_h100"])
def test_a_real_recording_in_small_batches_takes_one_pass(sample, tmp_path, monkeypatch, capsys):
    """The engine writes a step's record once its GPU time is known, so a prefill after it comes first in the
    file (the shipped H100 traces: a third of the slice rows, up to 17 ms late). Cut into 50-row batches, as a
    killed recording's stream is, the pftrace still takes one pass and draws what the two passes draw; without
    the Placer's window it would give up."""
    from cgwatch.samples import resolve
    jl = resolve(f"sample:{sample}")
    out = str(tmp_path / "s.arrows")
    monkeypatch.setattr(C, "COMPACT_ROWS", 50)
    convert(jl, out)
    got, want, two = _both(out, "pftrace", tmp_path, monkeypatch)
    assert two == 0 and got == want and len(got["slices"]) >= 3
    tr = open_trace(out)
    assert _place(tr, screen(tr).bad, 0.0) is None


@pytest.mark.parametrize("fmt", ["csv", "pftrace", "perfetto"])
def test_a_truncated_stream_is_exported_up_to_its_last_whole_batch_and_said(fmt, tmp_path, monkeypatch, capsys):
    path = _compact(tmp_path, synthetic(8, n=1200, bad=False), monkeypatch, ext=".arrows")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert main(["export", str(cut), "--format", fmt, "-o", str(tmp_path / f"cut.{fmt}")]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [w for w in err if w.startswith("cgwatch: warning:")]
    assert len(warned) == 1 and "truncated or damaged after byte" in warned[0] and "last whole batch" in warned[0]
    assert (tmp_path / f"cut.{fmt}").stat().st_size > 1000
