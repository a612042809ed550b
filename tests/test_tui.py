"""The TUI, driven by Textual's Pilot: (a) a deterministic FakeSource that answers engine
commands like the engine does, (b) ReplaySource on a fake clock; plus SVG snapshots."""


import numpy as np
import pytest

from cgwatch import records as R
from cgwatch.engine.buckets import dispatch
from cgwatch.replay import ReplaySource
from cgwatch.samples import sample_path
from cgwatch.report import build_report
from cgwatch.source import Source, ack
from cgwatch.trace import TraceWriter, read_trace
from cgwatch.tui import CgwatchApp
from cgwatch.tui.dialogs import HelpScreen, RecaptureDialog
from cgwatch.tui.state import ViewState
from cgwatch.tui.widgets import Banner, BucketTable, EventLog, HeaderBar, LastEvent, PaneBar, Totals
from textual.widgets import Input, Static

pytestmark = pytest.mark.anyio   # async tests run on anyio's pytest plugin (asyncio only, below)

SAMPLE = sample_path("llama1b_poisson_h100")   # the package's copy: an sdist has no sample_traces/
SIZE = (120, 40)
MIB = 2 ** 20
SIZES = [1, 2, 4, 8, 16, 32, 64]
HEADER = {"type": "header", "format": "cgwatch-trace", "version": 1, "gpu": "NVIDIA H100 80GB HBM3",
          "dtype": "bfloat16", "model": {"name": "llama-1b"},
          "config": {"capture_sizes": SIZES, "mode": "graph"}, "workload": {"rate": 0.25}}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _state(**kw) -> dict:
    base = {"mode": "graph", "cuda": True, "sizes": SIZES, "captured": [1, 2, 4, 16, 32, 64], "failed": [8],
            "max_padding_ratio": 0.5, "rate": 0.25, "arrival": "poisson", "paused": False}
    return base | kw


def _capture(t: float, b: int, ok: bool = True, pool: int = 0) -> dict:
    return R.event(R.EV_CAPTURE, t, bucket=b, ok=ok, capture_s=0.1 if ok else 0.02,
                   pool_bytes=pool if ok else None, nvml_bytes=None, kernels=759 if ok else None,
                   check={"tokens_equal": True, "rel_err": 0.001} if ok else None,
                   cause=None if ok else "host sync", hint=None, error=None if ok else "operation not permitted")


def synthetic_run() -> list[dict]:
    """A fixed run: bucket 8 fails to capture, 300 steps (some over the max), an eager window at
    steps 150-199, samples every 20 steps, a warning at step 120, a mark at step 250."""
    recs = [dict(HEADER)]
    for k, b in enumerate(reversed(SIZES)):
        recs.append(_capture(0.1 + 0.1 * k, b, ok=b != 8, pool=128 * MIB if b == 64 else 0))
        if b == 8:
            recs.append(R.alert(0.1 + 0.1 * k, "bucket 8 capture failed (host sync): operation not permitted; "
                                "batches for it run eager.", level="error", bucket=8))
    recs.append(R.event(R.EV_CAPTURE_DONE, 0.9, sizes=[1, 2, 4, 16, 32, 64], failed=[8], pool="shared",
                        pool_bytes=128 * MIB, seconds=0.8))
    recs.append(R.event(R.EV_STATE, 0.9, **_state()))
    graph = True
    for i in range(300):
        t = 1.0 + 0.01 * i
        if i in (150, 200):
            graph = i == 200
            recs.append(R.event(R.EV_MODE, t, mode="graph" if graph else "eager"))
        if i == 120:
            recs.append(R.alert(t, "bucket 32: graph tokens differ from eager (logits rel err 1.2e-01)"))
        if i == 250:
            recs.append(R.event(R.EV_MARK, t, text="warm"))
        batch = 1 + (i * 37) % 70
        d = dispatch(batch, SIZES, failed=[8], graph_mode=graph)
        gpu_ms = 2.5 + 0.03 * d.bucket if d.bucket else 12.0 + 0.1 * batch
        step = R.step(i, t, batch, d.target, d.bucket, d.reason, 80.0 if d.bucket else 9000.0, gpu_ms, batch)
        if i not in (0, 150, 200):   # back to back (not after a mode switch): the GPU waited this long
            step["gap_us"] = float(4 + i % 5) if d.bucket else float(8000 + 10 * (i % 7))
        recs.append(step)
        if i % 20 == 19:
            recs.append({"type": "sample", "t": t, "gpu_util": 40 + (i * 13) % 50, "gpu_busy": 0.3 + (i % 7) / 10})
    return recs


def kernels_run() -> list[dict]:
    """synthetic_run() from an engine that reports its kernels (fused) and each capture's compile seconds."""
    recs = [dict(HEADER, kernels="fused", kernels_why=None)]
    for rec in synthetic_run()[1:]:
        if rec.get("kind") == R.EV_CAPTURE and rec["ok"]:
            rec = dict(rec, compile_s=0.04)
        elif rec.get("kind") == R.EV_STATE:
            rec = dict(rec, kernels="fused")
        recs.append(rec)
    return recs


class FakeSource(Source):
    """Plays ``records`` when the test says so; answers commands as the engine does (events, then
    a state event, then the ack with the new state), and refuses playback commands."""

    title = "live (fake)"

    def __init__(self, records: list[dict], state: dict | None = None) -> None:
        self.records, self.i = records, 0
        self.sent: list[tuple] = []
        self.state = state or _state()
        self.t = 4.0

    def start(self, on_record, on_status) -> None:
        self.on_record, self.on_status = on_record, on_status
        self.set_connected(True)

    def set_connected(self, connected: bool) -> None:
        text = "live /tmp/cgwatch.sock" if connected else "daemon lost: connection refused; reconnecting"
        self.on_status({"connected": connected, "text": text, "dropped": 3 if connected else None,
                        "position_s": None, "duration_s": None, "speed": None, "paused": self.state["paused"]})

    def play(self, n: int | None = None) -> None:
        end = len(self.records) if n is None else self.i + n
        while self.i < end:
            self.on_record(self.records[self.i])
            self.i += 1

    def send(self, cmd: str, value: object = None) -> int:
        self.sent.append((cmd, value))
        req = len(self.sent)
        emit, t = self.on_record, self.t
        if cmd in ("seek", "speed", "next"):
            emit(ack(req, cmd, False, error="a live run cannot seek or change speed"))
            return req
        if cmd == "mode":
            self.state["mode"] = value
            emit(R.event(R.EV_MODE, t, mode=value))
        elif cmd == "recapture":
            emit(R.event(R.EV_RECAPTURE, t, sizes=value, old=self.state["sizes"], dropped=[]))
            emit(R.event(R.EV_RELEASE, t, freed_bytes=128 * MIB))
            for b in reversed(value):
                emit(_capture(t, b, pool=64 * MIB if b == max(value) else 0))
            emit(R.event(R.EV_CAPTURE_DONE, t, sizes=value, failed=[], pool="shared", pool_bytes=64 * MIB,
                         seconds=0.3))
            self.state.update(sizes=value, captured=value, failed=[])
        elif cmd == "kernels":
            if "kernels" not in self.state:   # as vLLM's backend: its state has no kernels
                emit(ack(req, cmd, False, error="vLLM picks its own kernels: 'kernels' is for cgwatch's engine"))
                return req
            self.state["kernels"] = value
            emit(R.event(R.EV_INFO, t, message=f"kernels: {value}", kernels=value))
            emit(R.event(R.EV_RELEASE, t, freed_bytes=128 * MIB))
            for b in reversed(self.state["sizes"]):   # every bucket again; the first compiles the kernels
                ok = b not in self.state["failed"]
                emit(dict(_capture(t, b, ok=ok, pool=64 * MIB if b == 64 else 0), compile_s=0.5 if b == 64 else 0.0))
            emit(R.event(R.EV_CAPTURE_DONE, t, sizes=self.state["captured"], failed=self.state["failed"],
                         pool="shared", pool_bytes=64 * MIB, seconds=0.7, compile_s=0.5))
        elif cmd == "rate":
            self.state["rate"] = value
            emit(R.event(R.EV_RATE, t, rate=value))
        elif cmd in ("pause", "resume"):
            self.state["paused"] = cmd == "pause"
            emit(R.event(R.EV_PAUSE, t, paused=self.state["paused"]))
        elif cmd == "mark":
            emit(R.event(R.EV_MARK, t, text=value))
        emit(R.event(R.EV_STATE, t, **self.state))
        emit(ack(req, cmd, True, state=dict(self.state)))
        return req

    def close(self) -> None:
        pass


def _widgets(app):
    return (app.query_one(HeaderBar), app.query_one(BucketTable), app.query_one(EventLog))


def _rows(app) -> dict[str, list[str]]:
    return {r[0]: r for r in app.query_one(BucketTable).row_texts()}


async def _live(pilot, src: FakeSource) -> None:
    src.play()
    pilot.app.flush()
    await pilot.pause()


# ---- the fold itself --------------------------------------------------------------------------------

def test_state_matches_report_on_the_h100_trace():
    trace = read_trace(SAMPLE)
    state = ViewState()
    state.fold(trace.header)
    for rec in trace.records:
        state.fold(rec)
    rep = build_report(trace)
    rows = {r["label"]: r for r in state.bucket_rows()}
    last = [b for b in rep["buckets"] if b["epoch"] == rep["epochs"][-1]["epoch"]]   # the size list in force
    assert len(rep["epochs"]) == 2 and list(rows) == [b["label"] for b in last]
    for b in last:
        row = rows[b["label"]]
        assert (row["steps"], row["hits"]) == (b["steps"], b["graph_steps"])
        assert row["hit_pct"] == pytest.approx(b["hit_pct"])
        assert row["padding_waste_pct"] == pytest.approx(b["padding_waste_pct"])
        assert row["graph_mib"] == pytest.approx(b["graph_mib"])
        if b["steps"] <= 512:   # within the percentile window: the same numbers
            assert row["graph_p99_ms"] == b["graph_p99_ms"]
        assert row["status"] == "ok"
    t = state.totals()
    assert t["hit_pct"] == pytest.approx(rep["totals"]["graph_hit_rate_pct"])
    assert t["padding_waste_pct"] == pytest.approx(rep["totals"]["padding_waste_pct"])
    assert t["graph_pool_mib"] == pytest.approx(rep["totals"]["graph_pool_mib"])
    assert state.mode_text == "graph" and state.sizes == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    steps_s, tok_s = state.rates()
    assert 50 < steps_s < 200 and tok_s > 1000


def test_state_no_cuda_and_over_max():
    state = ViewState()
    state.fold(dict(HEADER))
    state.fold(R.alert(0.0, "CUDA graphs need CUDA: no GPU here, running eager on the CPU", level="info"))
    state.fold(R.step(0, 0.1, 3, 4, None, R.REASON_NO_CUDA, 900.0, None, 3))
    state.fold(R.step(1, 0.2, 70, None, None, R.REASON_NO_CUDA, 900.0, None, 70))
    assert state.mode_text == "eager only: no CUDA"
    rows = {r["label"]: r for r in state.bucket_rows()}
    assert rows["4"]["status"] == "disabled: no CUDA" and rows["4"]["eager_p50_ms"] == 0.9
    assert rows[">64"]["steps"] == 1 and rows[">64"]["status"] == "-"


def test_without_cuda_the_hit_rate_is_na_live_and_replayed():
    """No graph was possible: hit % is n/a (not 0.0) in the table and the totals, whether the view started
    from the daemon's aggregate (a live run) or folded every record (a replay), as in the report."""
    from cgwatch.aggregate import VIEW_WINDOW, RunStats
    from cgwatch.protocol import AGGREGATE, AGGREGATE_ROW, SNAPSHOT_END
    recs = [dict(HEADER)] + [R.step(i, 0.1 * i, 1 + i % 4, dispatch(1 + i % 4, SIZES).target, None,
                                    R.REASON_NO_CUDA, 900.0, None, 1 + i % 4) for i in range(40)]
    stats = RunStats(window=VIEW_WINDOW)
    for rec in recs:
        stats.add(rec)
    run, rows = stats.state()
    live, replayed = ViewState(), ViewState()
    for rec in [recs[0], {"type": AGGREGATE, "window": VIEW_WINDOW, "rows": len(rows), "run": run},
                *({"type": AGGREGATE_ROW, "row": row} for row in rows), *recs[1:], {"type": SNAPSHOT_END}]:
        live.fold(rec)
    for rec in recs:
        replayed.fold(rec)
    for state in (live, replayed):
        assert state.steps == 40 and state.totals()["hit_pct"] is None and state.totals()["graph_share_pct"] == 0
        assert [r["hit_pct"] for r in state.bucket_rows()] == [None] * 3
    assert stats.totals()["hit_pct"] is None   # the report's accumulator (tests/test_report.py reads a trace)


def test_state_kernels_from_the_header_then_the_latest_state():
    state = ViewState()
    state.fold(dict(HEADER))
    assert state.kernels is None   # a trace from before the field (or vLLM): not shown
    state.fold(dict(HEADER, kernels="plain", kernels_why="fused kernels need CUDA (no CUDA here)"))
    assert state.kernels == "plain"
    state.fold(R.event(R.EV_STATE, 1.0, **_state(kernels="fused")))
    assert state.kernels == "fused"
    state.fold(R.event(R.EV_INFO, 2.0, message="kernels: plain", kernels="plain"))   # before its state event
    assert state.kernels == "plain"
    state.fold(R.event(R.EV_STATE, 3.0, **_state()))   # a state without the field leaves it
    assert state.kernels == "plain"
    state.fold(dict(HEADER))   # a new run starts from its header
    assert state.kernels is None


def test_state_compile_seconds_per_bucket():
    state = ViewState()
    state.fold(dict(HEADER))
    state.fold(dict(_capture(0.1, 64, pool=MIB), compile_s=1.25))
    state.fold(dict(_capture(0.2, 32), compile_s="1.5"))   # not a number: not shown
    state.fold(_capture(0.3, 16))                           # an older engine: no field
    rows = {r["label"]: r for r in state.bucket_rows()}
    assert (rows["64"]["compile_s"], rows["32"]["compile_s"], rows["16"]["compile_s"]) == (1.25, None, None)


def _gap_p50(recs: list[dict], target: int) -> str:
    """Independent: the linearly interpolated p50 (numpy's) of the gaps of graph / eager steps targeting ``target``."""
    def p50(values):
        v = list(values)
        return "n/a" if not v else f"{np.percentile(v, 50):.0f}"
    steps = [r for r in recs if r["type"] == "step" and r["target"] == target and r["gap_us"] is not None]
    return (p50(r["gap_us"] for r in steps if r["bucket"] is not None) + "/"
            + p50(r["gap_us"] for r in steps if r["bucket"] is None))


# ---- (a) the live screen, FakeSource -----------------------------------------------------------------

async def test_live_screen_shows_the_records():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        header, table, log = _widgets(app)
        assert header.run_text == "llama-1b · NVIDIA H100 80GB HBM3 · bfloat16"
        assert header.mode_text == "graph"
        assert "live /tmp/cgwatch.sock · dropped 3" == header.conn_text
        assert header.rate_text == "100.0 steps/s · 3,565 tok/s · t 4.0 s"   # the last 2 s of trace time
        rows = _rows(app)
        assert list(rows) == ["1", "2", "4", "8", "16", "32", "64", ">64"]
        assert rows["8"][-1] == "failed: host sync" and rows["8"][3] == "0.0"
        assert rows["64"][-1] == "ok" and rows["64"][8] == "128.0"
        assert rows["64"][7] == _gap_p50(src.records, 64) and rows["8"][7].startswith("n/a/80")
        gapped = [r for r in src.records if r["type"] == "step" and r["gap_us"] is not None]
        idle = ["%.1f" % (100 * sum(r["gap_us"] for r in rs) / sum(r["gap_us"] + 1000 * r["gpu_ms"] for r in rs))
                for rs in ([r for r in gapped if r["bucket"]], [r for r in gapped if not r["bucket"]])]
        first, second = str(app.query_one(Totals).render()).split("\n")
        assert first.endswith(f" · gpu idle g/e {idle[0]}/{idle[1]}%")
        steps = [r for r in src.records if r["type"] == "step"]
        graph = [r for r in steps if r["bucket"] is not None]
        graph_mode = [r for r in steps if r["reason"] != "eager_mode"]
        assert second == (f"{len(steps)} steps · hit {100 * len(graph) / len(graph_mode):.1f}% "
                          f"of graph mode · graph share {100 * len(graph) / len(steps):.1f}%")
        assert rows[">64"][2] == "0"
        text = "\n".join(log.texts())
        assert "ERROR bucket 8 capture failed" in text and "WARN bucket 32" in text
        assert "mode → eager" in text and "mark: warm" in text
        assert "pool 128.0 MiB · " in str(app.query_one(Totals).render())


async def test_g_toggles_mode_from_the_acknowledged_state():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        await pilot.press("g")
        assert src.sent == [("mode", "eager")]
        header, _, log = _widgets(app)
        assert header.mode_text == "eager"
        assert _rows(app)["16"][-1] == "disabled: eager mode"
        assert log.texts()[-1].endswith("mode ok → eager")
        await pilot.press("g")
        assert src.sent[-1] == ("mode", "graph") and header.mode_text == "graph"


async def test_k_switches_kernels_and_the_header_and_table_follow():
    src = FakeSource(kernels_run(), state=_state(kernels="fused"))
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        header, table, log = _widgets(app)
        assert header.mode_text == "graph · fused kernels"
        assert header.plain_lines()[0].endswith("  mode graph · fused kernels")
        assert table.plain_lines()[0].split()[-1] == "compile"   # after capture s
        rows = _rows(app)
        assert rows["64"][9:] == ["0.10", "0.04", "ok"] and rows["8"][9:] == ["n/a", "n/a", "failed: host sync"]
        await pilot.press("k")
        assert src.sent == [("kernels", "plain")]
        assert header.mode_text == "graph · plain kernels"
        assert log.texts()[-1].endswith("kernels ok → plain kernels")
        assert any(t.endswith("kernels: plain") for t in log.texts())
        rows = _rows(app)   # captured again: the new compile seconds
        assert rows["64"][10] == "0.50" and rows["32"][10] == "0.00" and rows["64"][-1] == "ok"
        await pilot.press("k")
        assert src.sent[-1] == ("kernels", "fused") and header.mode_text == "graph · fused kernels"


async def test_k_refused_by_an_engine_without_kernels_says_why():
    src = FakeSource(synthetic_run())   # as vLLM: no kernels in the header or the state
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        header, table, log = _widgets(app)
        assert header.mode_text == "graph" and "compile" not in table.plain_lines()[0]
        await pilot.press("k")
        assert src.sent == [("kernels", "fused")]
        assert log.texts()[-1].endswith("kernels refused: vLLM picks its own kernels: 'kernels' is for "
                                         "cgwatch's engine")
        assert header.mode_text == "graph"


async def test_r_recaptures_with_the_typed_sizes():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        await pilot.press("r")
        assert isinstance(app.screen, RecaptureDialog)
        box = app.screen.query_one(Input)
        assert box.value == "1,2,4,8,16,32,64"   # prefilled with the sizes in force
        box.value = ""
        await pilot.press(*"1,4,16", "enter")
        assert not isinstance(app.screen, RecaptureDialog)
        assert src.sent == [("recapture", [1, 4, 16])]
        rows = _rows(app)
        assert [rows[b][-1] for b in ("1", "4", "16")] == ["ok", "ok", "ok"]
        assert rows["16"][8] == "64.0"
        assert list(rows) == ["1", "4", "16"]   # the new size list's rows: the old list's stay in the report
        assert "sizes [1, 4, 16]" in str(app.query_one(Totals).render())
        texts = app.query_one(EventLog).texts()
        assert any("recapture [1,2,4,8,16,32,64] → [1,4,16]" in t for t in texts)
        assert texts[-1].endswith("recapture ok → [1,4,16]")


async def test_r_with_invalid_sizes_shows_the_error_and_sends_nothing():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        await pilot.press("r")
        app.screen.query_one(Input).value = ""
        await pilot.press(*"1,x", "enter")
        assert isinstance(app.screen, RecaptureDialog)
        assert "bad capture size list '1,x'" in str(app.screen.query_one("#error", Static).render())
        app.screen.query_one(Input).value = "0,4"
        await pilot.press("enter")
        assert "sizes must be >= 1" in str(app.screen.query_one("#error", Static).render())
        await pilot.press("escape")
        assert not isinstance(app.screen, RecaptureDialog)
        assert src.sent == []


async def test_p_rate_and_mark_keys():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        header, _, log = _widgets(app)
        await pilot.press("p")
        assert src.sent[-1] == ("pause", None) and header.mode_text == "graph · engine paused"
        assert log.texts()[-2].endswith("engine paused")
        await pilot.press("p")
        assert src.sent[-1] == ("resume", None) and header.mode_text == "graph"
        await pilot.press("+")
        assert src.sent[-1] == ("rate", 0.3125)
        assert log.texts()[-1].endswith("rate ok → 0.312 req/step")
        await pilot.press("-")
        assert src.sent[-1] == ("rate", 0.25)   # from the acknowledged 0.3125
        await pilot.press("m")
        cmd, text = src.sent[-1]
        assert cmd == "mark" and text.startswith("mark ")
        assert log.texts()[-2].endswith(f"mark: {text}")


async def test_live_source_refuses_playback_keys():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        await pilot.press("right", "]", "n")
        assert src.sent == [("seek", 10), ("speed", 2.0), ("next", "alert")]
        texts = app.query_one(EventLog).texts()
        assert all(t.endswith("refused: a live run cannot seek or change speed") for t in texts[-3:])


async def test_disconnect_banner_keeps_the_data_and_a_header_resets():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        rows = _rows(app)
        banner = app.query_one(Banner)
        assert not banner.display
        src.set_connected(False)
        await pilot.pause()
        assert banner.display and "daemon lost" in str(banner.render())
        assert "connection refused" in str(banner.render())
        assert _rows(app) == rows   # the last data stays
        assert "connection lost" in app.query_one(EventLog).texts()[-1]
        src.set_connected(True)
        src.records, src.i = synthetic_run()[:30], 0   # the reconnect resends history from the header
        src.play()
        app.flush()
        await pilot.pause()
        assert not banner.display
        assert sum(int(r[1]) for r in _rows(app).values()) == app.state.steps < 30
        assert "mode → eager" not in "\n".join(app.query_one(EventLog).texts())


async def test_80x24_a_lost_daemon_is_said_whole_and_one_gone_for_good_is_logged():
    """The banner wraps the source's reason (a long 'cannot connect' was cut at 80 columns); the header just says
    disconnected; a final status (cgwatch run's daemon child died) goes to the log too."""
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    lost = {"connected": False, "dropped": None, "position_s": None, "duration_s": None, "speed": None,
            "paused": False}
    retrying = "cannot connect to unix:/tmp/cgwatch-0/daemon-12345.sock: ConnectionRefusedError: Connection refused; retrying"
    async with app.run_test(size=SMALL) as pilot:
        await _live(pilot, src)
        src.on_status(dict(lost, text=retrying))
        await pilot.pause()
        screen = screen_text(app)
        assert f"⚠ {retrying} · showing the last data" in " ".join(line.strip() for line in screen)
        assert max(map(len, screen)) <= SMALL[0] and app.query_one(HeaderBar).conn_text == "disconnected"
        src.on_status(dict(lost, text="the daemon was killed by SIGKILL", final=True))
        app.flush()
        await pilot.pause()
        assert "⚠ the daemon was killed by SIGKILL · showing the last data" in "\n".join(screen_text(app))
        assert [text for _, _, text in app.state.log][-2:] == [f"connection lost: {retrying}",
                                                              "the daemon was killed by SIGKILL"]
        assert _rows(app) and app.state.steps == 300   # what was recorded stays


async def test_a_flood_from_a_thread_is_drawn_in_batches(monkeypatch):
    import threading
    import time

    redraws = []
    show = HeaderBar.show
    monkeypatch.setattr(HeaderBar, "show", lambda self, state: (redraws.append(1), show(self, state)))
    flood = [dict(HEADER)] + [R.step(i, i * 2e-4, 16, 16, 16, None, 80.0, 3.0, 16) for i in range(20000)]
    src = FakeSource(flood)
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        t0 = time.monotonic()
        threading.Thread(target=src.play).start()
        while app.state.steps < 20000 and time.monotonic() - t0 < 10:
            await pilot.pause(0.05)
        elapsed = time.monotonic() - t0
        assert app.state.steps == 20000
        assert len(redraws) <= 10 * elapsed + 5   # the 10 Hz timer, not one redraw per record
        assert _rows(app)["16"][1] == "20,000"


async def test_the_help_lists_every_key_the_app_binds():
    """The help's keys are read off the bindings (Textual's own ctrl+q too): shift+tab, Home and End included."""
    app = CgwatchApp(FakeSource(synthetic_run()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        shown = {key for line in app.screen.lines for key in line.strip().split("  ", 1)[0].split()}
        for _, binding in app._bindings:
            if not binding.system:
                assert app.get_key_display(binding) in shown, binding
        assert {"shift+tab", "Home", "End", "PgUp", "PgDn", "G"} <= shown
        from cgwatch.tui.app import HELP
        assert len(app.help_lines()) == len(HELP)   # every binding is on one of HELP's lines


async def test_help_screen():
    src = FakeSource(synthetic_run())
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        assert "recapture" in "\n".join(app.screen.lines)
        assert any(line.split() == "k kernels fused / plain (every bucket is captured again)".split()
                   for line in app.screen.lines)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        assert src.sent == []


# ---- (b) replay ----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _replay(path, **kw) -> tuple[CgwatchApp, ReplaySource, Clock]:
    clock = Clock()
    src = ReplaySource(path, clock=clock, **kw)
    return CgwatchApp(src), src, clock


async def test_replay_pause_speed_seek_keys():
    app, src, clock = _replay(SAMPLE, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        header, table, log = _widgets(app)
        assert "×1 0.0/42.4 s paused" in header.conn_text
        await pilot.press("right", "right")
        assert "×1 20.0/42.4 s paused" in header.conn_text
        assert header.mode_text == "eager"   # 18.4-26.0 s ran eager
        assert _rows(app)["64"][-1] == "disabled: eager mode" and _rows(app)["64"][6] != "n/a/n/a"
        assert log.texts()[-1].endswith("seek ok → 20.0 s")
        await pilot.press("left")   # backward: header re-emitted, the view rebuilt up to 10 s
        assert header.mode_text == "graph" and "10.0/42.4 s" in header.conn_text
        assert [t.split("s  ", 1)[1] for t in log.texts()] == [
            "captured [1,2,4,8,16,32,64] in 1.64 s, pool 134.0 MiB", "seek ok → 10.0 s"]
        assert app.state.steps == sum(1 for r in src.records if r["type"] == "step" and r["t"] <= 10.0)
        await pilot.press("]")
        assert "×2 10.0/42.4 s paused" in header.conn_text
        await pilot.press("p")   # play: 1 wall second at x2
        clock.now += 1.0
        src.poll()
        app.flush()
        await pilot.pause()
        assert "×2 12.0/42.4 s" in header.conn_text and "paused" not in header.conn_text
        assert 11.8 < app.state.t_last <= 12.0
        await pilot.press("p")
        assert header.conn_text.endswith("paused · read-only")
        await pilot.press("[", "[", "[")
        assert "×0.25" in header.conn_text
        await pilot.press("[")
        assert "speed refused: speed must be between 0.25 and 16, got 0.125" in log.texts()[-1]
        await pilot.press("g", "r")   # read-only: r opens no dialog, the log says why
        assert not isinstance(app.screen, RecaptureDialog)
        assert [t.split("s  ", 1)[1] for t in log.texts()[-2:]] == [
            "mode refused: replay is read-only", "recapture refused: replay is read-only"]


async def test_replay_next_mark_and_alert():
    app, src, clock = _replay(SAMPLE, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        header, table, log = _widgets(app)
        await pilot.press("n")   # this trace has no alerts
        assert log.texts()[-1].endswith("next refused: no further alert")
        await pilot.press("N")
        assert "35.5/42.4 s" in header.conn_text
        assert log.texts()[-2].endswith("mark: after-recapture")
        rows = _rows(app)
        assert list(rows) == ["1", "2", "4", "8", "16", "24", "32", "40", "48", "56", "64"]
        assert rows["56"][8] == "56.0" and rows["24"][-1] == "ok"


def _write_trace(path, recs) -> None:
    """A trace file of ``recs`` (a header first), ended as completed at t = 4 s."""
    w = TraceWriter(path, {k: v for k, v in recs[0].items() if k not in ("type", "format", "version")})
    for rec in recs[1:]:
        w.write(rec)
    w.close({"t": 4.0, "outcome": "completed"})


async def test_replay_next_alert_on_a_generated_trace(tmp_path):
    path = tmp_path / "synthetic.jsonl"
    _write_trace(path, synthetic_run())
    app, src, clock = _replay(path, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        header, table, log = _widgets(app)
        await pilot.press("n")
        assert "0.4/4.0 s" in header.conn_text   # the capture failure alert
        assert _rows(app)["8"][-1] == "failed: host sync"
        await pilot.press("n")
        assert "2.2/4.0 s" in header.conn_text and "WARN bucket 32" in log.texts()[-2]
        await pilot.press("n")
        assert log.texts()[-1].endswith("no further alert")
        await pilot.press("right")   # to the end
        assert "end of trace" in header.conn_text and "run ended (completed)" in log.texts()[-2]


async def test_replay_shows_the_kernels_and_refuses_k(tmp_path):
    path = tmp_path / "kernels.jsonl"
    _write_trace(path, kernels_run())
    app, src, clock = _replay(path, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        header, table, log = _widgets(app)
        assert header.mode_text == "graph · fused kernels"   # from the header, before any state event
        await pilot.press("right")
        assert header.mode_text == "graph · fused kernels" and _rows(app)["64"][10] == "0.04"
        await pilot.press("k")
        assert log.texts()[-1].endswith("kernels refused: replay is read-only")
        assert header.mode_text == "graph · fused kernels"


async def test_replay_real_time_thread():
    """The default threaded ReplaySource: records arrive from its thread and are drawn in batches."""
    src = ReplaySource(SAMPLE, speed=16)
    app = CgwatchApp(src)
    try:
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.state.steps > 500:
                    break
            assert app.state.steps > 500
            assert "×16" in app.query_one(HeaderBar).conn_text
    finally:
        src.close()


# ---- snapshots ---------------------------------------------------------------------------------------

def test_snapshot_live(snap_compare):
    src = FakeSource(synthetic_run())

    async def run_before(pilot):
        await _live(pilot, src)

    assert snap_compare(CgwatchApp(src), terminal_size=SIZE, run_before=run_before)


def test_snapshot_replay(snap_compare):
    app, src, _ = _replay(SAMPLE, start_paused=True)

    async def run_before(pilot):
        src.send("seek", 27.0)
        app.flush()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_bars_scale_columns_and_gaps():
    from cgwatch.tui.widgets import bars
    assert bars([1, 2, 3, 4, 5, 6, 7, 8, 9], 9, 1) == ["▁▂▃▄▅▅▆▇█"]       # smallest ▁, largest █
    assert bars([0, 5, 0, 10], 4, 2, gaps=True) == ["   █", " ▁ █"]          # 0 = no value: blank
    assert bars([3, 3, 3], 5, 2) == ["     ", "███  "]                        # flat: half height
    assert bars(list(range(1, 201)), 50, 3)[0][-1] == "█"                      # 200 points, max of each column
    assert bars([], 4, 2) == ["    ", "    "]


def test_a_corrupt_step_record_is_logged_and_skipped():
    st = ViewState()
    st.fold(dict(HEADER))
    st.fold(R.step(0, 1.0, 2, 2, 2, None, 50.0, 1.5, 2))
    st.fold(R.step(1, 1.1, 2, 2, 2, None, 50.0, 1.5, 2) | {"gap_us": "x"})
    st.fold(R.step(2, 1.2, 2, 2, 2, None, 50.0, 1.5, 2) | {"gap_us": 3.0})
    assert st.steps == 2 and st.buckets[2].graph_steps == 2 and list(st.buckets[2].graph_gap) == [3.0]
    assert st.log[-1][1:] == ("bold red", "skipped step record i=1: gap_us is 'x', not a number")


def test_live_duplicates_and_steps_running_back_are_skipped_and_counted():
    """The live screen (records.Screen, the readers' one validation): a step seen before and a step that
    starts before the latest one are skipped; the first few are logged, then a count at 10, 100, ..."""
    st = ViewState()
    st.fold(dict(HEADER))
    for i in range(5):
        st.fold(R.step(i, 1.0 + 0.01 * i, 2, 2, 2, None, 50.0, 1.5, 2))
    st.fold(R.step(3, 1.03, 2, 2, 2, None, 50.0, 1.5, 2))          # again
    st.fold(R.step(5, 0.5, 2, 2, 2, None, 50.0, 1.5, 2))           # starts before step 4
    for n in range(8):
        st.fold(R.step(2, 1.02, 2, 2, 2, None, 50.0, 1.5, 2))      # again and again
    assert st.steps == 5 and st.screen.count == 10
    skipped = [text for _, style, text in st.log if style == "bold red"]
    assert skipped == ["skipped step record i=3: a duplicate of step i=3",
                       "skipped step record i=5: t goes back 0.54 s from step i=4",
                       "skipped step record i=2: a duplicate of step i=2",
                       "skipped 10 records that cannot be trusted so far"]


def test_live_samples_and_events_go_through_the_same_screen():
    st = ViewState()
    st.fold(dict(HEADER))
    st.fold({"type": "sample", "t": 1.0, "gpu_util": 40})
    st.fold({"type": "sample", "t": 1.1, "gpu_util": float("nan")})
    st.fold(_capture(1.2, 16) | {"bucket": "16"})
    assert st.totals()["nvml_util_pct"] == 40.0 and 16 not in st.buckets and st.screen.count == 2
    assert [text for _, style, text in st.log if style == "bold red"] == [
        "skipped sample record: gpu_util is nan, not a finite number",
        "skipped event capture record: bucket is '16', not a number"]


async def test_vllm_piecewise_and_mixed_fit_120_columns():
    """vLLM-like traffic on 7 sizes (FULL and PIECEWISE graphs, mixed forwards, thousands of steps): the table
    splits hits into full/pw and counts mixed steps, the totals say so, and every line fits the screen."""
    recs = [dict(HEADER), R.event(R.EV_CAPTURE_DONE, 0.1, sizes=SIZES, failed=[], pool="shared",
                                  pool_bytes=512 * MIB, seconds=9.0)]
    t = 1.0
    for i in range(12_000):
        rows = 1 + (i * 7919) % 80
        target = next((s for s in SIZES if s >= rows), None)
        mixed = i % 5 == 0
        if i % 13 == 0 or target is None:
            bucket, mode, reason = None, "NONE", R.REASON_OVER_MAX if target is None else R.REASON_VLLM_NO_GRAPH
        else:
            bucket, mode, reason = target, "PIECEWISE" if mixed else "FULL", None
        recs.append(R.step(i, t, max(1, rows // 3) if mixed else rows, target, bucket, reason, 9000.0, 4.0, rows,
                           rows=rows, runtime_mode=mode, phase="mixed" if mixed else "decode",
                           prompt_tokens=rows - rows // 3 if mixed else 0))
        t += 0.005
    src = FakeSource(recs)
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        table = app.query_one(BucketTable)
        lines = table.plain_lines()
        assert lines[0].split()[:2] == ["hits", "hit"] and lines[1].split()[:4] == ["bucket", "steps", "full/pw", "mixed"]
        assert max(map(len, lines)) <= SIZE[0] - 2, lines
        assert table.content_size.width >= max(map(len, lines))   # nothing cut
        rows = {r[0]: r for r in table.row_texts()}
        row64 = app.state.buckets[64]
        assert rows["64"][2] == f"{row64.full:,}/{row64.piecewise:,}" and rows["64"][3] == f"{row64.forwards - row64.phases['decode']:,}"
        totals = str(app.query_one(Totals).render()).split("\n")
        assert max(map(len, totals)) <= SIZE[0] - 2, totals
        t = app.state.totals()
        assert f" · full {t['full_pct']:.1f}% pw {t['piecewise_pct']:.1f}%" in totals[1]
        assert f" · mixed {t['non_decode']:,}" in totals[1] and " · rows/req " in totals[1]


# ---- 80x24: the smallest screen laid out; below it, one line -------------------------------------------

SMALL = (80, 24)


def screen_text(app) -> list[str]:
    """The screen as the terminal shows it: the text of Textual's SVG export, one string per row."""
    import html
    import re
    lines = [""] * app.size.height
    for x, y, text in sorted(re.findall(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>',
                                        app.export_screenshot()), key=lambda m: float(m[0])):
        row = round((float(y) - 20) / 24.4)   # Rich's SVG: 12.2 px a column, 24.4 a row, the first at y=20
        lines[row] = lines[row].ljust(round(float(x) / 12.2)) + html.unescape(text).replace("\xa0", " ")
    return [line.rstrip() for line in lines]


async def test_80x24_every_number_is_on_screen_or_one_key_away():
    """The replay at 80x24: the header's position and state, every bucket row with every column (two panes),
    the totals and the log, the charts' max/min, each a tab away; nothing runs past the right edge."""
    app, src, clock = _replay(SAMPLE, start_paused=True)
    async with app.run_test(size=SMALL) as pilot:
        src.send("seek", 36.0)   # past the recapture: 11 buckets
        app.flush()
        await pilot.pause()
        screen = screen_text(app)
        assert len(screen) == 24 and max(map(len, screen)) <= 80
        header = app.query_one(HeaderBar).plain_lines()
        assert header[-1].endswith("×1 36.0/42.4 s paused · read-only") and any("tok/s" in h for h in header)
        assert any(line.strip().endswith("36.0/42.4 s paused · read-only") for line in screen)
        rep = build_report(read_trace(SAMPLE))
        labels = [b["label"] for b in rep["buckets"] if b["epoch"] == rep["epochs"][-1]["epoch"]]
        assert len(labels) == 11   # the size list in force (the report shows the first list's rows too)

        def table_rows():
            lines = [line.split() for line in screen_text(app)]
            return {cells[0]: cells for cells in lines if cells and cells[0] in labels}

        rows = table_rows()   # pane 1: steps, hits, hit %, padding, step times, every bucket
        assert list(rows) == labels
        assert "waste %" in "\n".join(screen) and "status" not in "\n".join(screen)
        assert all(len(r) == 7 for r in rows.values()) and rows["64"] == _rows(app)["64"][:7]
        assert "seek ok → 36.0 s" in screen[-2]   # the last log line shows whatever the pane
        await pilot.press("tab")   # pane 2: gpu idle, graph MiB, capture s, status
        rows = table_rows()
        assert list(rows) == labels and all(r[-1] == "ok" for r in rows.values())
        assert rows["56"] == [_rows(app)["56"][k] for k in (0, 7, 8, 9, 10)] and rows["56"][2] == "56.0"
        await pilot.press("tab")   # pane 3: totals and the log
        text = "\n".join(screen_text(app))
        assert "pool 238.0 MiB" in text and "4,000 steps" not in text and "hit 100.0% of graph mode" in text
        assert "events (trace time)" in text and "mode → eager" in text and "mark: after-recapture" in text
        await pilot.press("tab")   # pane 4: the charts with max and min
        text = "\n".join(screen_text(app))
        assert text.count(" max ") >= 6 and text.count(" min ") >= 6
        await pilot.press("tab")
        assert "waste %" in "\n".join(screen_text(app))   # round to the first pane
        await pilot.press("right")   # to the end: the header says so, and no live rates stay
        header = app.query_one(HeaderBar).plain_lines()
        assert header[-1].endswith("end of trace · read-only") and header[1].startswith("run ended (completed)")
        assert any(line.strip().endswith("42.4/42.4 s end of trace · read-only") for line in screen_text(app))


async def test_80x24_a_long_table_scrolls_and_says_which_rows_show():
    recs = [dict(HEADER, config={"capture_sizes": list(range(1, 41)), "mode": "graph"})]
    recs += [R.step(i, 0.01 * i, 1 + i % 40, 1 + i % 40, 1 + i % 40, None, 80.0, 3.0, 1) for i in range(400)]
    src = FakeSource(recs)
    app = CgwatchApp(src)
    async with app.run_test(size=SMALL) as pilot:
        await _live(pilot, src)
        table = app.query_one(BucketTable)
        first, last, n = table.shown
        assert (first, n) == (1, 40) and last < 40
        assert f"rows 1-{last} of 40" in "\n".join(screen_text(app))
        await pilot.press("pagedown")
        assert table.shown[0] == 11 and table.plain_lines()[2].split()[0] == "11"
        await pilot.press("end")
        assert table.shown[1] == 40 and f"rows {table.shown[0]}-40 of 40" in "\n".join(screen_text(app))
        await pilot.press("home", "down")
        assert table.shown[0] == 2


@pytest.mark.parametrize("size", [(79, 24), (80, 23), (72, 10), (40, 10), (20, 8)])
async def test_below_80x24_the_whole_message_says_the_terminal_is_too_small(size):
    """One line where it fits; narrower, a short form wrapped over a few lines: never cut."""
    app, src, clock = _replay(SAMPLE, start_paused=True)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        lines = [line.strip() for line in screen_text(app) if line.strip()]
        w, h = size
        text = " ".join(lines)
        assert max(map(len, screen_text(app))) <= w and len(lines) <= 4, lines
        assert text in (f"cgwatch needs a terminal of at least 80x24; this one is {w}x{h} (q quits)",
                        f"cgwatch needs 80x24 or more; this is {w}x{h}. q quits"), lines
        assert len(lines) == 1 or w < 60
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert "cgwatch needs" not in "\n".join(screen_text(app)) and "tok/s" in screen_text(app)[1]


async def test_back_from_too_small_the_pane_bar_and_the_last_line_are_drawn_again():
    """Nothing new arrives: the last log line is cut to the width again and the pane bar follows the table's
    rows whatever changed them (here its height, with no key and no record)."""
    recs = [dict(HEADER, config={"capture_sizes": list(range(1, 41)), "mode": "graph"})]
    recs += [R.step(i, 0.01 * i, 1 + i % 40, 1 + i % 40, 1 + i % 40, None, 80.0, 3.0, 1) for i in range(400)]
    recs.append(R.event(R.EV_MARK, 4.5, text="a long mark that is cut at 80 columns, " * 3))
    src = FakeSource(recs)
    app = CgwatchApp(src)
    async with app.run_test(size=SMALL) as pilot:
        await _live(pilot, src)
        table, bar, last = app.query_one(BucketTable), app.query_one(PaneBar), app.query_one(LastEvent)
        assert "rows 1-13 of 40" in bar.plain_lines()[0] and last.plain_lines()[0].endswith("…")
        await pilot.resize_terminal(40, 10)
        await pilot.pause()
        await pilot.resize_terminal(*SMALL)
        await pilot.pause()
        assert last.plain_lines()[0].endswith("…") and len(last.plain_lines()[0]) <= SMALL[0] - 2
        assert screen_text(app)[-2].rstrip().endswith("…")
        table.styles.max_height = 8
        await pilot.pause()
        first, end, n = table.shown
        assert end < 13 and f"rows {first}-{end} of {n}" in bar.plain_lines()[0]


async def test_no_color_draws_without_colour(monkeypatch):
    from textual.filter import NoColor
    import re

    def colours(app) -> set[str]:
        return set(re.findall(r"fill: (#[0-9a-f]{6})", app.export_screenshot()))

    app, src, _ = _replay(SAMPLE, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        src.send("seek", 20.0)
        await pilot.pause()
        assert len(colours(app)) > 5
    monkeypatch.setenv("NO_COLOR", "1")
    app, src, _ = _replay(SAMPLE, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        src.send("seek", 20.0)
        await pilot.pause()
        assert any(isinstance(f, NoColor) for f in app.get_line_filters())
        # the terminal's default foreground and background, and dim text
        assert len(colours(app)) <= 3, colours(app)


def test_snapshot_replay_80x24(snap_compare):
    app, src, _ = _replay(SAMPLE, start_paused=True)

    async def run_before(pilot):
        src.send("seek", 36.0)
        app.flush()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SMALL, run_before=run_before)


def test_snapshot_live_80x24_events_pane(snap_compare):
    src = FakeSource(synthetic_run())

    async def run_before(pilot):
        await _live(pilot, src)
        await pilot.press("tab", "tab")
        await pilot.press("]")   # a refusal: in the log, wrapped, not cut

    assert snap_compare(CgwatchApp(src), terminal_size=SMALL, run_before=run_before)


def long_alerts(n: int) -> list[dict]:
    return [R.alert(5.0 + k, f"alert {k}: running eager on the CPU because graphs need CUDA, and this line is long",
                    level="info") for k in range(n)]


def log_box_text(app) -> str:
    """The text inside the events box, its lines joined (the border and the scrollbar stripped)."""
    rows = screen_text(app)
    top = next(i for i, row in enumerate(rows) if "events (trace time)" in row)
    inside = [row[1:-1] for row in rows[top + 1:] if row.startswith("│")]
    return " ".join(" ".join(row.strip(" ▁▂▃▄▅▆▇█▏▕").split()) for row in inside)


async def test_80x24_the_log_wraps_left_of_its_scrollbar_and_shows_the_end():
    src = FakeSource(synthetic_run() + long_alerts(12))
    app = CgwatchApp(src)
    async with app.run_test(size=SMALL) as pilot:
        await _live(pilot, src)
        await pilot.press("tab", "tab")   # the events pane: more lines than it has rows
        await pilot.pause()
        log = app.query_one(EventLog)
        assert log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y and not log.show_horizontal_scrollbar
        text = log_box_text(app)
        for k in (10, 11):   # every character of the last lines, none under the scrollbar
            assert f"alert {k}: running eager on the CPU because graphs need CUDA, and this line is long" in text


async def test_home_and_end_move_the_log_shown_and_the_end_follows():
    """Home on the 80x24 events pane, then the full layout: End brings the log back to its end, and it follows
    new lines from there; scrolled back, new lines leave it where it is."""
    src = FakeSource(synthetic_run() + long_alerts(12))
    app = CgwatchApp(src)
    async with app.run_test(size=SMALL) as pilot:
        await _live(pilot, src)
        log = app.query_one(EventLog)
        await pilot.press("tab", "tab", "home")
        await pilot.pause()
        assert log.scroll_y == 0 and log.max_scroll_y > 0 and "End follows" in str(log.border_subtitle)
        src.records, src.i = long_alerts(3), 0
        await _live(pilot, src)
        assert log.scroll_y == 0   # scrolled back: it stays
        await pilot.resize_terminal(*SIZE)
        await pilot.pause()
        assert not app.compact and log.scroll_y == 0
        await pilot.press("end")
        await pilot.pause()
        assert log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y and not log.border_subtitle
        src.records, src.i = [R.event(R.EV_MARK, 30.0, text="after End")], 0
        await _live(pilot, src)
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y and "mark: after End" in log_box_text(app)
        await pilot.press("home")
        await pilot.pause()
        assert log.scroll_y == 0 and app.query_one(BucketTable).offset == 0


async def test_80x24_kernels_and_compile_seconds_fit():
    """The kernels go on the mode's line in their short form; compile s joins the graphs pane."""
    src = FakeSource(kernels_run(), state=_state(kernels="fused"))
    app = CgwatchApp(src)
    async with app.run_test(size=SMALL) as pilot:
        await _live(pilot, src)
        screen = screen_text(app)
        assert len(screen) == 24 and max(map(len, screen)) <= 80
        assert screen[0].rstrip().endswith("  mode graph · fused") and "tok/s" in screen[1]
        await pilot.press("tab")   # the graphs pane
        screen = screen_text(app)
        assert max(map(len, screen)) <= 80
        row = next(line.split() for line in screen if line.split()[:1] == ["64"])
        assert row[-4:] == ["128.0", "0.10", "0.04", "ok"]


def test_snapshot_live_80x24_kernels_graphs_pane(snap_compare):
    src = FakeSource(kernels_run(), state=_state(kernels="fused"))

    async def run_before(pilot):
        await _live(pilot, src)
        await pilot.press("tab")   # the graphs pane: capture s and compile s
        await pilot.press("k")     # plain: captured again, the answer in the last line

    assert snap_compare(CgwatchApp(src), terminal_size=SMALL, run_before=run_before)


async def test_80x24_the_help_fits_with_every_key():
    app = CgwatchApp(FakeSource(synthetic_run()))
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("?")
        await pilot.pause()
        text = "\n".join(screen_text(app))
        assert all(line in text for line in app.screen.lines)   # one row each, none cut
        assert "a live run cannot seek)." in text


# ---- labels, the end of a run, what a release counts ---------------------------------------------------

async def test_chart_values_fit_their_labels():
    """A CPU step of 1.79 s (1791054 µs): the launch chart's labels keep a space and 6 columns for the number."""
    from cgwatch.tui.widgets import Charts, fit, fmt
    assert [fit(v, lambda x: fmt(x, ".0f")) for v in (1791054, 123456, 12345678, None)] == ["1.79M", "123456", "12.3M", "n/a"]
    recs = [dict(HEADER)] + [R.step(i, 0.5 * i, 4, 4, None, R.REASON_NO_CUDA, 1791054.0 - 1000 * i, None, 4)
                             for i in range(5)]
    src = FakeSource(recs)
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await _live(pilot, src)
        lines = app.query_one(Charts).plain_lines()
        assert lines[6].startswith("step µs      1.79M") and lines[7].startswith("        max  1.79M")
        assert lines[8].startswith("        min  1.79M")
        assert "no CUDA: step µs = host time of the whole step" in app.query_one(Charts).border_title


async def test_the_header_says_the_run_ended_instead_of_showing_rates(tmp_path):
    src = FakeSource(synthetic_run() + [{"type": "end", "t": 4.0, "outcome": "completed", "steps": 300}])
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        src.play(len(src.records) - 1)
        app.flush()
        await pilot.pause()
        header = app.query_one(HeaderBar)
        assert header.rate_text.startswith("100.0 steps/s")   # live: the last 2 s
        await _live(pilot, src)
        t = app.state.totals()
        assert header.rate_text == (f"run ended (completed) · avg {300 / t['duration_s']:.1f} steps/s · "
                                    f"{t['tokens'] / t['duration_s']:,.0f} tok/s over {t['duration_s']:.1f} s")
    # a trace without an end record (the run was killed), replayed to its end
    path = tmp_path / "cut.jsonl"
    recs = synthetic_run()
    w = TraceWriter(path, {k: v for k, v in recs[0].items() if k not in ("type", "format", "version")})
    for rec in recs[1:]:
        w.write(rec)
    w.close({"t": 4.0, "outcome": "completed"})
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")   # drop the end record
    app, src, clock = _replay(path, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("right")
        header = app.query_one(HeaderBar)
        assert header.conn_text.endswith("end of trace · read-only")
        assert header.rate_text.startswith("trace ends here (no end record: the run was cut short) · avg ")


def test_a_release_says_what_it_counts():
    from cgwatch.tui.eventlog import describe_record
    rec = R.event(R.EV_RELEASE, 1.0, freed_bytes=400 * MIB, pool_bytes=134 * MIB)
    assert describe_record(rec) == ("dim", "released old graphs: pool 134.0 MiB; the allocator returned 400.0 MiB "
                                           "to the driver (its cached blocks included)")
    # the H100 sample predates pool_bytes: the view names the pool in force until the release
    trace = read_trace(sample_path("llama1b_live_h100"))
    state = ViewState()
    state.fold(trace.header)
    for r in trace.records:
        state.fold(r)
    released = [text for _, _, text in state.log if text.startswith("released")]
    assert released == ["released old graphs: pool 134.0 MiB; the allocator returned 400.0 MiB to the driver "
                        "(its cached blocks included)"]
