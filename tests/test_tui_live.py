"""The TUI against a real daemon (tiny model, CPU): every control key sends its command and the screen
shows the acknowledged result (or the engine's refusal: fused kernels on a CPU)."""

import os
import tempfile
import threading

import pytest

from cgwatch.client import LiveSource
from cgwatch.daemon import run_daemon
from cgwatch.engine.loop import EngineConfig
from cgwatch.tui.app import CgwatchApp
from cgwatch.tui.widgets import EventLog, HeaderBar
from cgwatch.workload import WorkloadSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def daemon():
    sock = os.path.join(tempfile.mkdtemp(), "d.sock")
    cfg = EngineConfig(model="tiny", max_seq=64, sample_interval_s=0.1,
                       workload=WorkloadSpec(arrival="poisson:0.5", prompt_len="uniform:4:8",
                                             output_len="uniform:4:16", max_concurrency=8, max_seq=64))
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(target=run_daemon, daemon=True,
                          kwargs=dict(cfg=cfg, listen=f"unix:{sock}", token=None, record=None, prometheus_port=None,
                                      max_steps=None, stop=stop, announce=lambda line: ready.set()))
    th.start()
    assert ready.wait(120), "daemon did not start"
    yield f"unix:{sock}"
    stop.set()
    th.join(timeout=60)


async def until(pilot, pred, what, timeout=60.0):
    for _ in range(int(timeout / 0.1)):
        pilot.app.flush()
        if pred():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}; log: {pilot.app.query_one(EventLog).texts()[-5:]}")


async def test_every_control_key_round_trips_through_a_real_daemon(daemon, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # Triton's CPU interpreter would let fused run
    app = CgwatchApp(LiveSource(daemon))
    async with app.run_test(size=(120, 40)) as pilot:
        header, log, st = app.query_one(HeaderBar), app.query_one(EventLog), app.state
        await until(pilot, lambda: st.engine.get("mode") == "graph" and st.steps > 0, "the first steps")
        assert "tiny" in header.run_text and header.mode_text == "eager only: no CUDA · plain kernels"

        await pilot.press("k")              # fused needs CUDA: the engine's refusal, shown as it said it
        await until(pilot, lambda: any("kernels refused: kernels fused: fused kernels need CUDA" in t
                                       for t in log.texts()), "the kernels refusal")
        assert st.kernels == "plain" and "plain kernels" in header.mode_text

        await pilot.press("g")
        await until(pilot, lambda: st.engine.get("mode") == "eager", "mode eager")
        assert any("mode ok" in t or "mode → eager" in t for t in log.texts())

        await pilot.press("r")
        await pilot.pause(0.2)
        inp = app.screen.query_one("Input")
        inp.value = "1,3,8"
        await pilot.press("enter")
        await until(pilot, lambda: st.sizes == [1, 3, 8], "sizes [1, 3, 8]")

        rate = st.engine["rate"]
        await pilot.press("+")
        await until(pilot, lambda: st.engine["rate"] == pytest.approx(rate * 1.25), "rate up")
        await pilot.press("-")
        await until(pilot, lambda: st.engine["rate"] == pytest.approx(rate), "rate down")

        await pilot.press("p")
        await until(pilot, lambda: st.engine.get("paused") is True, "paused")
        assert "paused" in header.mode_text
        await pilot.press("p")
        await until(pilot, lambda: st.engine.get("paused") is False, "resumed")

        await pilot.press("m")
        await until(pilot, lambda: any("mark" in t for t in log.texts()), "the mark in the log")

        await pilot.press("right")          # playback keys are refused on a live run, visibly
        await until(pilot, lambda: any("not available on a live run" in t for t in log.texts()), "seek refusal")
        await pilot.press("q")
