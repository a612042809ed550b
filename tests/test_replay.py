"""ReplaySource: a trace played through the Source interface. Driven with a fake clock
(``clock=`` + ``poll()``: no thread, no real time), except one real-time threaded test."""

import threading

import pytest

from cgwatch import records as R
from cgwatch.errors import CgwatchError
from cgwatch.replay import ReplaySource
from cgwatch.trace import TraceWriter
from cgwatch.window import Window

ENGINE_CMDS = [("mode", "eager"), ("recapture", [1, 4]), ("padding", 0.2), ("rate", 0.5), ("mark", "x")]


def _trace_records() -> list[dict]:
    """Steps at t = 1..10 s, alerts at 3.5 and 8.5 s, a mark at 6.5 s."""
    recs = [R.event(R.EV_CAPTURE_DONE, 0.5, sizes=[4], failed=[], pool_bytes=0, seconds=0.4, pool="shared")]
    for i in range(10):
        t = float(i + 1)
        recs.append(R.step(i, t, 3, 4, 4, None, 50.0, 2.0, 3))
        if t == 3.0:
            recs.append(R.alert(3.5, "first alert"))
        if t == 6.0:
            recs.append(R.event(R.EV_MARK, 6.5, text="a mark"))
        if t == 8.0:
            recs.append(R.alert(8.5, "second alert", level="error"))
    return recs


@pytest.fixture
def trace_path(tmp_path):
    path = tmp_path / "run.jsonl"
    w = TraceWriter(path, {"model": {"name": "tiny"}, "gpu": "cpu"})
    for rec in _trace_records():
        w.write(rec)
    w.close({"t": 10.5, "steps": 10, "outcome": "completed"})
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Player:
    """A ReplaySource on a fake clock, with what it emitted."""

    def __init__(self, path, **kw) -> None:
        self.clock = Clock()
        self.src = ReplaySource(path, clock=self.clock, **kw)
        self.records: list[dict] = []
        self.statuses: list[dict] = []
        self.src.start(self.records.append, self.statuses.append)

    def at(self, now: float) -> "Player":
        self.clock.now = now
        self.src.poll()
        return self

    def send(self, cmd, value=None) -> dict:
        req = self.src.send(cmd, value)
        ack = self.records[-1]
        assert ack["type"] == "ack" and ack["id"] == req and ack["cmd"] == cmd
        return ack

    def times(self) -> list[float]:
        return [r["t"] for r in self.records if r["type"] == "step"]

    @property
    def status(self) -> dict:
        return self.statuses[-1]


def test_header_first_then_paced_by_t(trace_path):
    p = Player(trace_path)
    assert [r["type"] for r in p.records] == ["header"]
    assert p.status["connected"] is True and p.status["position_s"] == 0.0
    assert p.status["duration_s"] == 10.5 and p.status["dropped"] is None
    p.at(0.99)
    assert p.times() == []
    p.at(3.0)
    assert p.times() == [1.0, 2.0, 3.0]
    assert p.status["text"] == "replay run.jsonl ×1 3.0/10.5 s"
    p.at(3.6)
    assert p.records[-1]["message"] == "first alert"


def test_speed(trace_path):
    p = Player(trace_path, speed=2.0).at(2.0)
    assert p.times() == [1.0, 2.0, 3.0, 4.0]
    ack = p.send("speed", 4)
    assert ack["ok"] and ack["playback"]["speed"] == 4.0 and p.status["speed"] == 4.0
    p.at(3.0)   # one more wall second at x4: position 8
    assert p.times()[-1] == 8.0 and p.status["position_s"] == 8.0
    assert "×4 8.0/10.5 s" in p.status["text"]


@pytest.mark.parametrize("bad", [0.1, 17, 0, -1, "fast", None, True])
def test_bad_speed_is_refused(trace_path, bad):
    p = Player(trace_path)
    ack = p.send("speed", bad)
    assert not ack["ok"] and "between 0.25 and 16" in ack["error"]
    assert p.status["speed"] == 1.0


def test_bad_speed_in_constructor(trace_path):
    with pytest.raises(CgwatchError, match="between 0.25 and 16"):
        ReplaySource(trace_path, speed=32)


def test_pause_resume(trace_path):
    p = Player(trace_path).at(2.0)
    assert p.send("pause")["ok"] and p.status["paused"] is True and p.status["text"].endswith("paused")
    p.at(6.0)
    assert p.times() == [1.0, 2.0]   # paused: nothing new
    assert p.send("resume")["playback"]["position_s"] == 2.0
    p.at(7.0)   # resumes where it was, not at the wall clock
    assert p.times() == [1.0, 2.0, 3.0]
    assert p.status["paused"] is False


def test_start_paused(trace_path):
    p = Player(trace_path, start_paused=True).at(5.0)
    assert p.times() == [] and p.status["paused"] is True


def test_seek_forward_emits_skipped_records_at_once(trace_path):
    p = Player(trace_path, start_paused=True).at(1.0)
    ack = p.send("seek", 5)
    assert ack["ok"] and ack["playback"]["position_s"] == 5.0
    assert p.times() == [1.0, 2.0, 3.0, 4.0, 5.0]
    types = [r.get("kind") or r["type"] for r in p.records]
    assert types == ["header", "capture_done", "step", "step", "step", "alert", "step", "step", "ack"]


def test_seek_backward_resends_header_and_replays_up_to_target(trace_path):
    p = Player(trace_path).at(7.0)
    before = list(p.records)
    n = len(p.records)
    ack = p.send("seek", -4.5)
    assert ack["ok"] and ack["playback"]["position_s"] == 2.5
    replayed = p.records[n:-1]
    assert replayed[0]["type"] == "header"
    assert replayed == before[: len(replayed)]   # the same records, in file order
    assert [r["t"] for r in replayed if r["type"] == "step"] == [1.0, 2.0]
    p.at(8.0)   # playback goes on from the new position
    assert p.times()[-1] == 3.0


def test_seek_clamps(trace_path):
    p = Player(trace_path, start_paused=True)
    assert p.send("seek", -100)["playback"]["position_s"] == 0.0
    assert p.send("seek", 100)["playback"]["position_s"] == 10.5
    assert len(p.times()) == 10
    assert not p.send("seek", "soon")["ok"]


def test_next_alert_and_mark(trace_path):
    p = Player(trace_path, start_paused=True)
    ack = p.send("next", "alert")
    assert ack["ok"] and ack["playback"]["position_s"] == 3.5
    assert p.records[-2]["message"] == "first alert"   # just past it
    ack = p.send("next", "mark")
    assert ack["playback"]["position_s"] == 6.5 and p.records[-2]["text"] == "a mark"
    assert p.send("next", "alert")["playback"]["position_s"] == 8.5
    ack = p.send("next", "alert")
    assert not ack["ok"] and ack["error"] == "no further alert"
    assert p.status["position_s"] == 8.5
    assert not p.send("next", "mark")["ok"]
    assert not p.send("next", "anything")["ok"]


@pytest.mark.parametrize("cmd,value", ENGINE_CMDS)
def test_engine_commands_are_refused(trace_path, cmd, value):
    ack = Player(trace_path).send(cmd, value)
    assert ack == {"type": "ack", "id": ack["id"], "cmd": cmd, "ok": False, "error": "replay is read-only"}


def test_end_of_trace(trace_path):
    p = Player(trace_path).at(20.0)
    assert p.records[-1]["type"] == "end"
    assert len(p.times()) == 10
    assert p.status["paused"] is True and p.status["position_s"] == 10.5
    assert "end of trace" in p.status["text"]
    assert not p.send("resume")["ok"]
    p.send("seek", -3)                     # back from the end: playable again
    assert p.send("resume")["ok"]
    p.at(21.0)
    assert p.status["position_s"] == 8.5


def test_status_about_four_times_a_second_while_playing(trace_path):
    p = Player(trace_path)
    for k in range(1, 41):   # 2 s in steps of 50 ms
        p.at(k * 0.05)
    assert 8 <= len(p.statuses) <= 10
    p.send("pause")
    n = len(p.statuses)
    for k in range(41, 81):
        p.at(k * 0.05)
    assert len(p.statuses) == n   # paused: no periodic status


def test_out_of_order_lines_keep_file_order(tmp_path):
    path = tmp_path / "ooo.jsonl"
    w = TraceWriter(path, {})
    w.write(R.step(0, 1.0, 1, 1, 1, None, 1.0, 1.0, 1))
    w.write({"type": "sample", "t": 0.98, "gpu_util": 50})   # the sampler thread, a bit behind
    w.write(R.step(1, 1.01, 1, 1, 1, None, 1.0, 1.0, 1))
    w.close()
    p = Player(path).at(0.99)
    assert [r["type"] for r in p.records] == ["header"]   # the sample waits for the step before it
    p.at(1.0)
    assert [r["type"] for r in p.records] == ["header", "step", "sample"]


def test_missing_and_corrupt_traces(tmp_path):
    with pytest.raises(CgwatchError, match="no such trace file"):
        ReplaySource(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    with pytest.raises(CgwatchError, match="not a cgwatch trace"):
        ReplaySource(bad)
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"type":"header","format":"cgwatch-trace","version":1}\n{oops\n')
    with pytest.raises(CgwatchError, match="corrupt record"):
        ReplaySource(corrupt)


def test_truncated_trace_plays_with_a_warning(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"type":"header","format":"cgwatch-trace","version":1}\n'
                    '{"type":"step","i":0,"t":0.5,"batch":1,"target":1,"bucket":1,"mode":"graph",'
                    '"reason":null,"padded":0,"host_us":1,"gpu_ms":1,"tokens":1}\n{"type":"st')
    src = ReplaySource(path)
    assert len(src.records) == 1 and "truncated" in src.warnings[0]


def test_real_time_thread(trace_path):
    """The default: a thread paced by time.monotonic (x16: the 10.5 s trace takes ~0.66 s)."""
    src = ReplaySource(trace_path, speed=16)
    records, done = [], threading.Event()

    def on_status(status):
        if "end of trace" in status["text"]:
            done.set()

    src.start(records.append, on_status)
    try:
        assert done.wait(10), "playback did not reach the end"
        assert [r["type"] for r in records][:2] == ["header", "event"]
        assert [r["t"] for r in records if r["type"] == "step"] == [float(i) for i in range(1, 11)]
        assert records[-1]["type"] == "end"
        assert src.send("seek", -20) and records[-1]["ok"]   # commands work from another thread
    finally:
        src.close()
    assert not src._thread.is_alive()


def test_records_that_cannot_be_trusted_are_not_played_and_the_log_says_so(tmp_path):
    """The validation every reader shares: a duplicate step and a step whose t runs back 4 s are not played
    (so the TUI's numbers are the report's), ``warnings`` has the one line, and an info record at t 0 says it
    in the TUI's log."""
    from cgwatch.report import build_report
    from cgwatch.trace import read_trace
    from cgwatch.tui.state import ViewState
    recs = _trace_records()
    steps = [k for k, r in enumerate(recs) if r["type"] == "step"]
    recs[steps[6]] = recs[steps[6]] | {"t": 3.0}        # step 6 at t 3 s, between steps 2 and 3: runs back
    recs.insert(steps[4] + 1, dict(recs[steps[4]]))     # step 4 twice
    path = tmp_path / "bad.jsonl"
    w = TraceWriter(path, {"model": {"name": "tiny"}, "gpu": "cpu"})
    for rec in recs:
        w.write(rec)
    w.close({"t": 10.5, "steps": 10, "outcome": "completed"})
    p = Player(path).at(100.0)
    info = p.records[1]
    assert info["type"] == "event" and info["kind"] == R.EV_INFO and info["t"] == 0.0
    assert info["message"].startswith("warning: skipped 2 records that cannot be trusted")
    assert [r["i"] for r in p.records if r["type"] == "step"] == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert len(p.src.warnings) == 1 and p.src.warnings[0] == info["message"][len("warning: "):]
    state = ViewState()
    for rec in p.records:
        state.fold(rec)
    rep = build_report(read_trace(path))
    assert state.totals()["steps"] == rep["totals"]["steps"] == 9
    assert state.totals()["duration_s"] == rep["totals"]["duration_s"] == 10.5
    assert any("skipped 2 records" in text for _, _, text in state.log)


@pytest.mark.parametrize("start,pos", [(Window(4.0), 4.0), (Window(last=3.0), 7.5), (Window(99.0), 10.5),
                                       (Window(last=99.0), 0.0)])
def test_a_replay_starts_at_from_or_last(trace_path, start, pos):
    p = Player(trace_path, start=start)
    assert p.status["position_s"] == pos                       # the records before it shown at once
    assert p.times() == [t for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0) if t <= pos]
    p.at(1.0)
    assert p.status["position_s"] == min(pos + 1.0, 10.5)    # and plays on from there


def test_the_replay_command_takes_from_and_last(trace_path, monkeypatch, capsys):
    from cgwatch import cli
    seen = {}

    def run_tui(source, **kw):
        seen["pos"] = source.pos
        return 0
    monkeypatch.setattr("cgwatch.tui.app.run_tui", run_tui)
    monkeypatch.setattr(cli, "_need_terminal", lambda what: None)
    assert cli.main(["replay", str(trace_path), "--last", "2.5s"]) == 0 and seen["pos"] == 8.0
    assert cli.main(["replay", str(trace_path), "--from", "soon"]) == 2
    assert "--from 'soon': not a time" in capsys.readouterr().err
    assert cli.main(["replay", str(trace_path), "--from", "1", "--last", "2"]) == 2


def test_a_compact_replay_starts_at_from_as_its_json_lines_twin(trace_path, tmp_path):
    from cgwatch.convert import convert
    pq = str(tmp_path / "run.parquet")
    convert(str(trace_path), pq)
    a, b = Player(trace_path, start=Window(4.0)), Player(pq, start=Window(4.0))
    try:
        assert a.status["position_s"] == b.status["position_s"] == 4.0
        assert b.times() == a.times() == [1.0, 2.0, 3.0, 4.0]
    finally:
        b.src.close()
