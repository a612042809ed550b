"""Hardening on the CPU: commands checked at one door (bounds, finite, types, the engine's limits), a
rate of 0 that idles the loop, bounded input lengths, control characters shown escaped, a client that
reconnects after a run ended, late joiners with the whole run's totals, tokens checked at connect,
and CPU threads."""

import json
import math
import os
import threading

import pytest
import torch

from cgwatch import records as R
from cgwatch.aggregate import RunStats
from cgwatch.client import LiveSource, connect
from cgwatch.daemon import Daemon
from cgwatch.engine.control import Command, Limits, limits_from_header, make_command, parse_action, parse_scheduled
from cgwatch.engine.loop import Engine, EngineConfig, cpu_threads
from cgwatch.errors import CgwatchError
from cgwatch.headless import StatusLine
from cgwatch.protocol import ProtocolError, decode
from cgwatch.report import build_report, format_report
from cgwatch.sinks import Fanout
from cgwatch.text import printable
from cgwatch.trace import TraceWriter, read_trace
from cgwatch.tui import CgwatchApp
from cgwatch.tui.dialogs import RecaptureDialog
from cgwatch.tui.state import ViewState
from cgwatch.tui.widgets import EventLog, HeaderBar
from cgwatch.workload import MAX_RATE, WorkloadSpec
from test_tui import HEADER, SIZE, FakeSource, synthetic_run
from textual.widgets import Input, Static
from waiting import wait_until, read_snapshot

TOKEN = "s3cret"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def tiny_config(**kw) -> EngineConfig:
    return EngineConfig(model="tiny", max_seq=64, sample_interval_s=0.05,
                        workload=WorkloadSpec(arrival=kw.pop("arrival", "poisson:0.5"), prompt_len="uniform:4:8",
                                              output_len="uniform:2:6", max_concurrency=4, max_seq=64), **kw)


def answer_ok(cmd):
    cmd.reply({"ok": True, "state": {"cmd": cmd.name, "value": cmd.value}})


# ---- 1-3: one door for every command -----------------------------------------------------------------

@pytest.mark.parametrize("name,value,needle", [
    ("rate", 1e308, "rate"), ("rate", math.inf, "rate"), ("rate", math.nan, "rate"), ("rate", -1, "rate"),
    ("rate", MAX_RATE * 10, "rate"), ("rate", "2", "rate"), ("rate", True, "rate"), ("rate", 10 ** 400, "rate"),
    ("padding", math.nan, "padding"), ("padding", 1.5, "padding"), ("padding", None, "padding"),
    ("mode", "fast", "mode"), ("mode", ["eager"], "mode"),
    ("recapture", [], "no capture sizes"), ("recapture", "", "no capture sizes"), ("recapture", " , ", "no capture"),
    ("recapture", [10 ** 30], "at most 8"), ("recapture", "99999999999", "too large"),
    ("recapture", [2, 9], "at most 8 (--max-concurrency"), ("recapture", [0, 2], ">= 1"),
    ("recapture", [1.5], "integers"), ("recapture", [True], "integers"), ("recapture", [[1]], "integers"),
    ("recapture", list(range(1, 5000)), "too many"), ("recapture", "9" * 5000, "too large"),
    ("recapture", {"a": 1}, "capture sizes"), ("pause", "now", "no value"), ("mark", "", "mark"),
    ("mark", 5, "mark"), ("explode", None, "unknown command"), ("x" * 5000, None, "unknown command"),
])
def test_make_command_refuses_with_one_short_line(name, value, needle):
    with pytest.raises(CgwatchError, match=needle.replace("(", r"\(")) as e:
        make_command(name, value, Limits(8))
    text = str(e.value)
    assert "\n" not in text and len(text) < 200, text


def test_make_command_normalises_what_it_accepts():
    assert make_command("rate", -0.0).value == 0.0 and math.copysign(1, make_command("rate", -0.0).value) == 1
    assert make_command("rate", 3).value == 3.0 and make_command("rate", MAX_RATE).value == MAX_RATE
    assert make_command("recapture", [8, 1, 1], Limits(8)).value == [1, 8]
    assert make_command("recapture", "4, 2", Limits(8)).value == [2, 4]
    assert make_command("mark", "m" * 500).value == "m" * 200
    assert make_command("pause") == Command("pause", True) and make_command("resume") == Command("pause", False)
    # --at goes through the same door, with the limits the CLI knows
    for action, needle in (("rate=1e308", "rate"), ("rate=nan", "rate"), ("rate=-inf", "rate"),
                           ("recapture=64", "at most 8"), ("padding=inf", "padding")):
        with pytest.raises(CgwatchError, match=needle):
            parse_action(action, Limits(8))
    assert parse_scheduled("5:rate=0", Limits(8)) == (5, Command("rate", 0.0))
    with pytest.raises(CgwatchError):
        parse_scheduled("9" * 5000 + ":eager")


def test_limits_come_from_the_header():
    assert limits_from_header({"command_limits": {"max_size": 16, "max_size_by": "x"}}) == Limits(16, "x")
    assert limits_from_header({"workload": {"max_concurrency": 8}}).max_size == 8   # older headers
    assert limits_from_header({"backend": "vllm", "workload": {"max_concurrency": 8}}).max_size is None
    assert limits_from_header({}).max_size is None


def test_protocol_bounds_numbers_at_parse():
    for line in (b'{"cmd":"rate","value":' + b"9" * 5000 + b"}", b'{"cmd":"rate","value":NaN}',
                 b'{"cmd":"rate","value":Infinity}', b'{"cmd":"rate","value":1e999}',
                 b'{"cmd":"rate","value":0.' + b"1" * 100 + b"}"):
        with pytest.raises(ProtocolError) as e:
            decode(line)
        assert len(str(e.value)) < 100
    assert decode(b'{"cmd":"rate","value":1e300}')["value"] == 1e300


def test_daemon_answers_every_bad_line_and_keeps_reading(addr):
    """A 5,000-digit integer used to kill the connection's reader thread without a reply."""
    with Daemon(addr).start({"workload": {"max_concurrency": 4}}, answer_ok) as d:
        c = connect(d.address)
        read_snapshot(c)
        for raw, needle in ((b'{"cmd":"recapture","value":[' + b"9" * 5000 + b'],"id":1}', "5,000 characters"),
                            (b'{"cmd":"rate","value":NaN,"id":2}', "NaN"),
                            (json.dumps({"cmd": "mark", "value": "m", "id": "i" * 5000}).encode(), "id of 5,000"),
                            (json.dumps({"cmd": "recapture", "value": "9" * 5000, "id": 3}).encode(), "too large"),
                            (json.dumps({"cmd": "recapture", "value": [10 ** 30], "id": 4}).encode(), "at most 4"),
                            (json.dumps({"cmd": "recapture", "value": [], "id": 5}).encode(), "no capture sizes"),
                            (json.dumps({"cmd": "x" * 5000, "id": 6}).encode(), "unknown command")):
            c.send_raw(raw + b"\n")
            msg = c.recv(10)
            assert msg is not None, f"no reply to {raw[:60]!r}"
            assert msg["type"] == "ack" and msg["ok"] is False and needle in msg["error"], msg
            assert len(json.dumps(msg)) < 300
        req = c.send("mode", "eager")   # the same connection still works
        assert c.wait_ack(req, 10)["ok"] is True
        c.close()


def test_no_command_kills_a_real_engine_and_rate_zero_idles(addr):
    """rate 1e308 was acked and the next step died (OverflowError in the Poisson draw); rate 0 ended the
    run once the live requests finished; a recapture of [10**30] left the engine with no sizes."""
    fanout, recs = Fanout(), []
    engine = Engine(tiny_config(), fanout)
    d = Daemon(addr)
    fanout.add(recs.append)
    fanout.add(d.publish)
    d.start(engine.header(), engine.submit)
    stop, failure = threading.Event(), []

    def run():
        try:
            engine.run(None, stop.is_set)
        except BaseException as e:   # the test reads it
            failure.append(e)

    loop = threading.Thread(target=run)
    loop.start()
    try:
        c = connect(addr)

        def cmd(name, value=None):
            return c.wait_ack(c.send(name, value), timeout=60)

        for name, value, needle in (("rate", 1e308, "rate"), ("rate", -1, "rate"), ("recapture", [10 ** 30], "at most 4"),
                                    ("recapture", [], "no capture sizes"), ("padding", 2, "padding")):
            a = cmd(name, value)
            assert a["ok"] is False and needle in a["error"], a
        sizes = cmd("mark", "still here")["state"]["sizes"]
        assert sizes == [1, 2, 4]   # the recaptures that were refused changed nothing
        wait_until(lambda: sum(r["type"] == "step" for r in recs) >= 3, what="steps")
        a = cmd("rate", -0.0)
        assert a["ok"] and a["state"]["rate"] == 0.0 and '"rate":0.0' in json.dumps(a, separators=(",", ":"))
        wait_until(lambda: any(r.get("kind") == "alert" and "waiting for commands" in r.get("message", "")
                               for r in recs), 120, "the idle notice")
        assert not failure and loop.is_alive()
        assert cmd("mark", "idle")["ok"]   # idle, not ended: commands are still answered
        assert not any(r["type"] == "end" for r in recs)
        last = max(r["i"] for r in recs if r["type"] == "step")
        assert cmd("rate", 2.0)["ok"]
        wait_until(lambda: any(r["type"] == "step" and r["i"] > last for r in recs), 120, "steps again")
        c.close()
    finally:
        stop.set()
        loop.join(60)
        engine.close()
        d.close()
    assert not failure, failure


def test_scheduled_rate_zero_idles_a_headless_run_until_stopped():
    """``--at 5:rate=0`` ended the run with "poisson rate 0 with no live requests"."""
    recs, stop, failure = [], threading.Event(), []
    engine = Engine(tiny_config(schedule=((1, Command("rate", 1e308)), (2, Command("rate", 0.0)))), recs.append)

    def run():
        try:
            engine.run(500, stop.is_set)
        except BaseException as e:
            failure.append(e)

    loop = threading.Thread(target=run)
    loop.start()
    try:
        wait_until(lambda: any("waiting for commands" in r.get("message", "") for r in recs), 120, "idle")
        assert loop.is_alive() and not failure
        steps = sum(r["type"] == "step" for r in recs)
        assert steps < 500
        refused = [r for r in recs if r.get("kind") == "alert" and r.get("message", "").startswith("rate refused")]
        assert len(refused) == 1   # a scheduled command that is refused is said in the run, not silently lost
    finally:
        stop.set()
        loop.join(60)
        engine.close()
    assert not failure, failure


@pytest.mark.anyio
async def test_recapture_dialog_checks_against_the_engine_limit_and_quotes_briefly():
    header = dict(HEADER, workload={"rate": 0.25, "max_concurrency": 64},
                  command_limits={"max_size": 64, "max_size_by": "--max-concurrency, the KV slots"})
    src = FakeSource([header] + synthetic_run()[1:])
    app = CgwatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        src.play()
        app.flush()
        await pilot.pause()
        for typed, needle in (("99999999999", "too large"), ("1,128", "at most 64 (--max-concurrency"),
                              (",", "no capture sizes"), ("9" * 5000, "too large")):
            await pilot.press("r")
            assert isinstance(app.screen, RecaptureDialog)
            box = app.screen.query_one(Input)
            box.value = typed
            await pilot.press("enter")
            assert isinstance(app.screen, RecaptureDialog)
            error = str(app.screen.query_one("#error", Static).render())
            assert needle in error and len(error) < 160, error
            await pilot.press("escape")
        assert src.sent == []
        await pilot.press("r")
        assert app.screen.query_one(Input).max_length and app.screen.query_one(Input).max_length <= 2000
        await pilot.press("escape")


# ---- 4: control characters are shown escaped ----------------------------------------------------------

NASTY = "line1\nline2\ttab\x07bell\x1b[2J\x1b]0;title\x07\r\x9b31m\u2028end"


def test_printable_escapes_control_characters():
    out = printable(NASTY)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029" for c in out)
    assert out.startswith("line1\\nline2\\ttab\\x07bell\\x1b[2J") and out.endswith("\\u2028end")
    assert printable("µs → ok") == "µs → ok"


def test_marks_and_messages_reach_no_terminal_raw(tmp_path):
    state = ViewState()
    state.fold(dict(HEADER))
    state.fold(R.event(R.EV_MARK, 1.0, text=NASTY))
    state.fold(R.alert(1.0, NASTY))
    state.fold({"type": "ack", "id": 1, "cmd": "mode", "ok": False, "error": NASTY})
    for _, _, text in state.log:
        assert "\n" not in text and "\x1b" not in text and "\x07" not in text and "\\x1b" in text

    trace = tmp_path / "t.jsonl"
    w = TraceWriter(str(trace), {"gpu": "cpu", "model": {"name": "tiny"}})
    w.write(R.event(R.EV_MARK, 0.5, text=NASTY))
    w.write(R.alert(0.6, NASTY))
    w.write(R.step(0, 0.7, 1, 1, None, R.REASON_NO_CUDA, 100.0, None, 1))
    w.close({"steps": 1, "tokens": 1, "outcome": "completed"})
    text = format_report(build_report(read_trace(trace)))
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text
    assert not any(line.startswith("line2") for line in text.splitlines())

    class Out(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass

    out = Out()
    StatusLine(out)(R.alert(0.6, NASTY))
    assert len(out) == 1 and out[0].count("\n") == 1 and "\x1b" not in out[0]


# ---- 7: reconnect after the run ended ------------------------------------------------------------------

def test_live_source_reconnects_after_a_clean_end(addr):
    """A daemon that ends on SIGTERM sends ``end`` and closes; one that comes back on the address is
    a new run, and the view follows it (it did only after a SIGKILL)."""
    got, statuses = [], []
    d = Daemon(addr).start({"cgwatch": "first"}, answer_ok)
    src = LiveSource(addr)
    src.start(got.append, statuses.append)
    try:
        wait_until(lambda: statuses and statuses[-1]["connected"], 20, "connected")
        d.publish({"type": "end", "outcome": "interrupted", "steps": 0, "tokens": 0})
        d.close()
        wait_until(lambda: not statuses[-1]["connected"], 20, "the end")
        assert "run ended (interrupted)" in statuses[-1]["text"] and "waiting for a daemon" in statuses[-1]["text"]
        d = Daemon(addr).start({"cgwatch": "second"}, answer_ok)
        wait_until(lambda: any(m.get("type") == "header" and m.get("cgwatch") == "second" for m in got), 30,
                   "the new run's header")
        assert statuses[-1]["connected"]
    finally:
        src.close()
        d.close()


# ---- 8: late joiners see the whole run ------------------------------------------------------------------

def test_run_stats_state_round_trips_through_json():
    a = RunStats(window=512)
    for rec in synthetic_run()[1:]:
        a.add(rec)
    run, rows = json.loads(json.dumps(a.state()))
    b = RunStats.from_state(run, rows, window=512)
    assert b.totals() == a.totals()
    assert {k: r.summary() for k, r in b.buckets.items()} == {k: r.summary() for k, r in a.buckets.items()}
    for rec in synthetic_run()[-40:]:   # and goes on from there
        if rec["type"] == "step":
            a.add(rec)
            b.add(rec)
    assert b.totals() == a.totals()


def test_a_late_joiner_gets_the_same_totals_despite_a_flood_of_marks(addr):
    recs = synthetic_run()
    header, body = recs[0], recs[1:]
    d = Daemon(addr, queue_max=10 ** 6).start(header, answer_ok)
    early, early_msgs = ViewState(), []
    conn = connect(addr)

    def read():
        while (m := conn.recv(30)) is not None:
            early_msgs.append(m)
            if m.get("kind") == "mark" and m.get("text") == "last":
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(10):   # 3,000 steps, then 3,000 marks: more than the daemon retains of either
            for rec in body:
                if rec["type"] == "step":
                    rec = dict(rec, i=rec["i"] + 300 * k, t=rec["t"] + 3.0 * k)
                elif k and rec["type"] == "event" and rec["kind"] in ("capture", "capture_done", "alert"):
                    continue
                d.publish(rec)
        for k in range(2999):
            d.publish(R.event(R.EV_MARK, 40.0, text=f"flood {k}"))
        d.publish(R.event(R.EV_MARK, 40.0, text="last"))
        reader.join(60)
        for m in early_msgs:
            early.fold(m)
        late_conn = connect(addr)
        late = ViewState()
        for m in [{"type": "snapshot_begin"}, *read_snapshot(late_conn), {"type": "snapshot_end"}]:
            late.fold(m)
        late_conn.close()
    finally:
        conn.close()
        d.close()
    assert early.steps == 3000
    assert late.steps == early.steps
    assert late.totals() == early.totals()
    assert late.bucket_rows() == early.bucket_rows()
    assert late.engine == early.engine and late.engine["sizes"] == [1, 2, 4, 8, 16, 32, 64]   # the state event stays


# ---- 9: tokens at connect, read-only sessions -----------------------------------------------------------

def test_attach_with_a_wrong_token_says_so_at_once(addr, capsys):
    from cgwatch.cli import main
    with Daemon(addr, TOKEN).start({}, answer_ok):
        assert main(["attach", addr, "--token", "wrong"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refused the token" in err, err
        assert main(["attach", addr, "--token", TOKEN]) == 2   # right token: on to the TUI (no terminal here)
        assert "needs a terminal" in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.parametrize("token,why", [("wrong", "the token was refused"), (None, "the daemon wants a token")])
async def test_a_read_only_session_says_so_and_opens_no_dialog(addr, token, why):
    with Daemon(addr, TOKEN).start(dict(HEADER), answer_ok):
        app = CgwatchApp(LiveSource(addr, token=token))
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(300):
                app.flush()
                if app.state.read_only == why:
                    break
                await pilot.pause(0.05)
            assert app.state.read_only == why
            app.flush()
            await pilot.pause()
            assert "read-only" in app.query_one(HeaderBar).conn_text
            await pilot.press("r")
            assert not isinstance(app.screen, RecaptureDialog)
            assert app.query_one(EventLog).texts()[-1].endswith(f"recapture refused: {why}")


def test_the_right_token_grants_control(addr):
    with Daemon(addr, TOKEN).start({}, answer_ok):
        with connect(addr, token=TOKEN) as c:
            assert c.auth()["ok"] is True
        with connect(addr, token="nope") as c:
            a = c.auth()
            assert a["ok"] is False and "token" in a["error"]


# ---- 10: CPU threads ----------------------------------------------------------------------------------

def test_cpu_threads_leave_a_core_and_honour_explicit_choices():
    assert cpu_threads(3) == (3, "--threads")
    assert cpu_threads(None, {"OMP_NUM_THREADS": "5"}) == (5, "OMP_NUM_THREADS")
    n, why = cpu_threads(None, {"OMP_NUM_THREADS": "junk"})
    cores = len(os.sched_getaffinity(0))
    assert why == "auto" and 1 <= n <= max(1, cores - 1) and n <= 8


def test_the_cpu_engine_sets_its_threads_and_records_them():
    before = torch.get_num_threads()
    try:
        eng = Engine(tiny_config(threads=1), lambda rec: None)
        h = eng.header()
        assert torch.get_num_threads() == 1 and h["cpu_threads"] == 1 and h["cpu_threads_by"] == "--threads"
        assert h["command_limits"] == {"max_size": 4, "max_size_by": "--max-concurrency, the KV slots"}
        with pytest.raises(CgwatchError, match="--threads"):
            Engine(tiny_config(threads=0), lambda rec: None)
    finally:
        torch.set_num_threads(before)
