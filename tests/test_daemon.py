"""The live daemon and its clients on the CPU: snapshot + live stream without gap, slow clients,
fuzzed frames, tokens, commands against a real tiny engine, and a daemon killed mid-stream."""

import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from cgwatch import records as R
from cgwatch.client import LiveSource, connect
from cgwatch.daemon import KEEP_STEPS, Daemon, default_socket_path, run_daemon
from cgwatch.engine.loop import Engine, EngineConfig
from cgwatch.errors import CgwatchError
from cgwatch.protocol import MAX_LINE, LineReader, LineTooLong, encode, parse_address
from cgwatch.sinks import Fanout
from cgwatch.trace import read_trace
from cgwatch.workload import WorkloadSpec
from waiting import wait_until, read_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "s3cret"


def tiny_config(**kw) -> EngineConfig:
    return EngineConfig(model="tiny", max_seq=64, sample_interval_s=0.05,
                        workload=WorkloadSpec(arrival="poisson:0.5", prompt_len="uniform:4:8",
                                              output_len="uniform:4:16", max_concurrency=4, max_seq=64), **kw)


def answer_ok(cmd):
    """A stand-in engine: every valid command succeeds at once."""
    cmd.reply({"ok": True, "state": {"cmd": cmd.name, "value": cmd.value}})


@pytest.fixture
def daemon(addr):
    d = Daemon(addr).start({"cgwatch": "test"}, answer_ok)
    yield d
    d.close(drain_s=0)


def collect(conn, until, out: list) -> threading.Thread:
    """Read messages into ``out`` on a thread until ``until(msg)`` or the connection ends."""
    def run():
        try:
            while (msg := conn.recv(20)) is not None:
                out.append(msg)
                if until(msg):
                    return
        except (ConnectionError, OSError):
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# ---- protocol ----

def chunks(data: bytes, size: int):
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return lambda n: parts.pop(0) if parts else b""


def test_line_reader_splits_across_chunks_and_skips_overlong_lines():
    data = b'{"a":1}\n' + b"x" * 100 + b'\n{"b":2}\n\npartial'
    r = LineReader(chunks(data, 7), limit=50)
    assert r.readline() == b'{"a":1}'
    with pytest.raises(LineTooLong):
        r.readline()
    assert r.readline() == b'{"b":2}'   # the long line is skipped, the next one is whole
    assert r.readline() == b""
    assert r.readline() is None         # a partial last line is not a line


def test_addresses():
    assert parse_address("unix:/run/x.sock") == ("unix", "/run/x.sock", 0)
    assert parse_address("/tmp/x.sock") == ("unix", "/tmp/x.sock", 0)
    assert parse_address("127.0.0.1:5555") == ("tcp", "127.0.0.1", 5555)
    assert parse_address("[::1]:80") == ("tcp", "::1", 80)
    assert parse_address("localhost:0") == ("tcp", "localhost", 0)
    with pytest.raises(CgwatchError, match="name the host"):
        parse_address(":5555")
    assert encode({"type": "x", "v": "é"}) == b'{"type":"x","v":"\\u00e9"}\n'


def test_default_socket_path_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    p = default_socket_path()
    assert p == str(tmp_path / "cgwatch" / f"daemon-{os.getpid()}.sock")
    assert os.stat(tmp_path / "cgwatch").st_mode & 0o777 == 0o700


# ---- streaming ----

def test_two_clients_get_the_same_records_from_a_real_engine(addr):
    got = {0: [], 1: []}
    conns, readers, lines = [], [], []

    def announce(line):   # clients join once the daemon accepts, before the first step
        lines.append(line)
        if "listening" in line:
            for k in (0, 1):
                conns.append(connect(addr))
                readers.append(collect(conns[-1], lambda m: m["type"] == "end", got[k]))

    summary = run_daemon(tiny_config(), addr, None, None, 0, 4, threading.Event(), announce)
    for t in readers:
        t.join(10)
    assert lines[0] == f"cgwatch daemon listening on {addr}" and lines[1].startswith("cgwatch metrics on http://")
    assert summary["steps"] == 4 and summary["outcome"] == "completed"
    assert got[0] == got[1]
    types = [m["type"] for m in got[0]]
    assert types[:2] == ["snapshot_begin", "header"] and types[-1] == "end"
    assert [m["i"] for m in got[0] if m["type"] == "step"] == [0, 1, 2, 3]
    assert not os.path.exists(addr[5:])   # close() removed the socket file


def test_late_joiner_gets_header_history_and_live_without_gap(daemon):
    daemon.publish(R.event(R.EV_INFO, 0.0, message="early"))
    stop = threading.Event()
    count = [0]

    def publisher():
        i = 0
        while not stop.is_set() or i < 3500:
            daemon.publish(R.step(i, i * 1e-3, 4, 4, 4, None, 10.0, None, 4))
            if i % 100 == 0:
                daemon.publish({"type": "sample", "t": i * 1e-3, "gpu_util": None})
                time.sleep(0.002)   # some pacing: the test is about order, not overflow
            i += 1
            count[0] = i
        daemon.publish(R.event(R.EV_MARK, i * 1e-3, text="last"))

    t = threading.Thread(target=publisher)
    t.start()
    wait_until(lambda: count[0] > 2500, what="2500 steps")
    conn = connect(daemon.address)
    assert conn.hello == {"type": "hello", "protocol": 1, "cgwatch": conn.hello["cgwatch"], "control": "open"}
    snap = read_snapshot(conn)
    stop.set()
    live = []
    collect(conn, lambda m: m.get("kind") == "mark", live).join(20)
    t.join()
    assert snap[0]["type"] == "header" and snap[0]["format"] == "cgwatch-trace" and snap[0]["cgwatch"] == "test"
    # the aggregate: the bucket's run-long row, then its row in the one size list (epoch 1)
    assert snap[1]["type"] == "aggregate" and snap[1]["rows"] == 2 and [m["row"]["epoch"] for m in snap[2:4]] == [None, 1]
    assert snap[2]["row"]["forwards"] == snap[3]["row"]["forwards"] == snap[1]["run"]["n"]
    assert snap[4] == {"type": "event", "kind": "info", "t": 0.0, "message": "early"}   # events are kept
    steps = [m["i"] for m in snap if m["type"] == "step"]
    assert len(steps) == KEEP_STEPS and steps == list(range(steps[0], steps[0] + KEEP_STEPS))
    live_steps = [m["i"] for m in live if m["type"] == "step"]
    assert live_steps == list(range(steps[-1] + 1, count[0]))   # no gap, no duplicate across snapshot_end
    assert live[-1]["kind"] == "mark" and not any(m["type"] == "dropped" for m in live)
    conn.close()


def test_slow_client_does_not_block_the_publisher_and_learns_what_it_missed(daemon):
    slow = connect(daemon.address)            # reads nothing until the end
    fast = connect(daemon.address)
    wait_until(lambda: daemon.client_count == 2, what="two clients")
    N = 200_000
    got = []
    reader = collect(fast, lambda m: m.get("i") == N - 1, got)
    spent = 0.0
    for i in range(N):
        t0 = time.perf_counter()
        daemon.publish({"type": "step", "i": i})
        spent += time.perf_counter() - t0
        if i % 2000 == 0:   # pace for the fast client only; publish itself never waits
            wait_until(lambda: daemon.client_stats()[1]["queued"] < 5000, what="fast client")
    reader.join(60)
    print(f"publish: {spent / N * 1e6:.2f} us/record with a stuck and a live client")
    fast_steps = [m["i"] for m in got if m["type"] == "step"]
    assert fast_steps == list(range(N)) and not any(m["type"] == "dropped" for m in got)
    stats = daemon.client_stats()
    assert stats[0]["dropped"] > 0 and stats[1]["dropped"] == 0

    # Whole records in order, each gap announced where it is: the sender thread may have moved some of
    # the queue into the socket while publishing went on, so there may be more than one gap; each
    # ``dropped`` carries the running total.
    read_snapshot(slow)
    received, told = 0, 0
    while received + told < N:
        msg = slow.recv(5)
        if msg["type"] == "step":
            assert msg["i"] == received + told
            received += 1
        else:
            assert msg["type"] == "dropped" and msg["count"] > told, msg
            told = msg["count"]
    assert told == stats[0]["dropped"]
    daemon.publish({"type": "step", "i": N})
    assert slow.recv(5) == {"type": "step", "i": N}   # live again after the gap
    slow.close()
    fast.close()


def test_fuzzed_frames_get_error_acks_and_streaming_goes_on(daemon):
    bystander = connect(daemon.address)
    fuzz = connect(daemon.address)
    read_snapshot(bystander)
    read_snapshot(fuzz)
    bad_lines = [
        b"not json", b"{", b'{"cmd": "mode", "value": "eager"', b"\xff\xfe\xfa", b"[1, 2]", b"42", b'"text"',
        b"null", b"[" * 100_000, b"x" * (MAX_LINE + 10),
        json.dumps({"cmd": "explode", "id": 1}).encode(), json.dumps({"cmd": 5, "id": 2}).encode(),
        json.dumps({"cmd": "mode", "value": 3, "id": 3}).encode(),
        json.dumps({"cmd": "padding", "value": "x", "id": 4}).encode(),
        json.dumps({"cmd": "padding", "value": True, "id": 5}).encode(),
        json.dumps({"cmd": "recapture", "value": {"a": 1}, "id": 6}).encode(),
        json.dumps({"cmd": "recapture", "value": [-1, "z"], "id": 7}).encode(),
        json.dumps({"cmd": "pause", "value": "now", "id": [8]}).encode(),
        json.dumps({"cmd": "mark", "value": "", "id": 9}).encode(),
    ]
    for line in bad_lines:
        fuzz.send_raw(line + b"\n")
        msg = fuzz.recv(5)
        assert msg["type"] == "ack" and msg["ok"] is False and msg["error"], (line[:40], msg)
    assert msg["id"] == 9 and msg["cmd"] == "mark"
    rng = random.Random(7)
    for _ in range(300):
        fuzz.send_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\n")
    fuzz.send_raw(b"y" * (3 * MAX_LINE))   # an endless line, then the rest of it and a command
    fuzz.send_raw(b"tail\n")
    req = fuzz.send("mode", "eager")
    assert fuzz.wait_ack(req, 10) == {"type": "ack", "id": req, "cmd": "mode", "ok": True,
                                     "state": {"cmd": "mode", "value": "eager"}}
    daemon.publish({"type": "step", "i": 0})
    assert bystander.recv(5) == {"type": "step", "i": 0}
    assert daemon.client_count == 2
    fuzz.send_raw(b'{"cmd": "mo')   # hang up mid-line
    fuzz.close()
    daemon.publish({"type": "step", "i": 1})
    assert bystander.recv(5) == {"type": "step", "i": 1}
    bystander.close()


def test_token_guards_control_but_not_streaming():
    d = Daemon("127.0.0.1:0", token=TOKEN).start({}, answer_ok)
    try:
        assert d.address.startswith("127.0.0.1:")
        viewer = connect(d.address)
        assert viewer.hello["control"] == "token"
        for kw in ({}, {"token": "wrong"}, {"token": 5}):
            ack = viewer.wait_ack(viewer.send("mode", "eager", **kw))
            assert ack["ok"] is False and ack["error"] == "control refused: bad or missing token"
        d.publish({"type": "step", "i": 0})
        read_snapshot(viewer)
        assert viewer.recv(5) == {"type": "step", "i": 0}   # read-only streaming still works
        owner = connect(d.address, token=TOKEN)
        assert owner.wait_ack(owner.send("mode", "eager"))["ok"] is True
        viewer.close()
        owner.close()
    finally:
        d.close()


def test_binding_beyond_loopback_needs_a_token():
    with pytest.raises(CgwatchError, match=r"^--listen 0\.0\.0\.0:0 is not loopback: pass --token$"):
        Daemon("0.0.0.0:0")
    Daemon("0.0.0.0:0", token=TOKEN).close()
    Daemon("localhost:0").close()
    with pytest.raises(CgwatchError, match="not loopback"):   # before any model is loaded
        run_daemon(tiny_config(), "0.0.0.0:5555", None, None, None, 1, threading.Event())


def test_unix_socket_live_stale_and_foreign(addr):
    path = addr[5:]
    with Daemon(addr).start({}, None):
        with pytest.raises(CgwatchError, match="another cgwatch daemon is live"):
            Daemon(addr)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)        # a socket file nobody listens on: removed
    stale.close()
    Daemon(addr).close()
    open(path, "w").close()
    with pytest.raises(CgwatchError, match="not a socket"):
        Daemon(addr)
    assert os.path.exists(path)   # never deletes a file that is not a socket


# ---- commands against a real engine ----

def test_commands_round_trip_through_a_real_tiny_engine(addr):
    d = Daemon(addr)
    fanout = Fanout()
    engine = Engine(tiny_config(), fanout)
    fanout.add(d.publish)
    d.start(engine.header(), engine.submit)
    stop = threading.Event()
    loop = threading.Thread(target=engine.run, args=(None, stop.is_set))
    loop.start()
    try:
        c = connect(addr)

        def cmd(name, value=None):
            return c.wait_ack(c.send(name, value), timeout=30)

        a = cmd("mode", "eager")
        assert a["ok"] and a["cmd"] == "mode" and a["state"]["mode"] == "eager"
        assert cmd("rate", 2.0)["state"]["rate"] == 2.0
        assert cmd("pause")["state"]["paused"] is True
        assert cmd("resume")["state"]["paused"] is False
        assert cmd("recapture", [1, 2])["state"]["sizes"] == [1, 2]
        assert cmd("mark", "hello")["ok"]
        bad = cmd("padding", 1.5)
        assert bad["ok"] is False and "padding" in bad["error"]
        assert cmd("mode", "graph")["state"]["mode"] == "graph"
        seen = list(c._backlog)
        last = max([m["i"] for m in seen if m["type"] == "step"], default=-1)
        while (m := c.recv(30))["type"] != "step" or m["i"] <= last + 1:
            pass   # the engine keeps stepping after all that
        kinds = [m.get("kind") for m in seen if m["type"] == "event"]
        assert {"mode", "rate", "pause", "recapture", "mark", "state"} <= set(kinds)
        c.close()
    finally:
        stop.set()
        loop.join(30)
        engine.close()
        d.close()


# ---- a daemon killed mid-stream ----

def readline(f, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(f, selectors.EVENT_READ)
    ready = sel.select(timeout)
    sel.close()
    return f.readline() if ready else ""


def test_a_source_whose_daemon_is_gone_says_how_it_ended_and_stops(addr):
    """cgwatch run's TUI watches its daemon child (``gone``): once the child is gone (reaped a moment after
    its socket closed) the last status says how it ended, is final, and no reconnect is tried."""
    from cgwatch.errors import exit_text
    assert exit_text(-signal.SIGKILL) == "was killed by SIGKILL" and exit_text(3) == "exited with code 3"
    why: list[str] = []
    d = Daemon(addr).start({}, None)
    statuses: list[dict] = []
    src = LiveSource(addr, gone=lambda: why[0] if why else None)
    src.start(lambda rec: None, statuses.append)
    try:
        wait_until(lambda: statuses and statuses[-1]["connected"], 30, "connected")
        d.close()
        threading.Timer(0.3, lambda: why.append(f"the daemon {exit_text(-signal.SIGKILL)}")).start()
        wait_until(lambda: not src._thread.is_alive(), 30, "the source to stop")
        assert [s["text"] for s in statuses[1:]] == ["the daemon was killed by SIGKILL"]
        assert statuses[-1]["final"] is True and statuses[-1]["connected"] is False
    finally:
        src.close()


DAEMON_SCRIPT = """
import sys, threading
from cgwatch.daemon import run_daemon
from cgwatch.engine.loop import EngineConfig
from cgwatch.workload import WorkloadSpec
cfg = EngineConfig(model="tiny", max_seq=64, sample_interval_s=0.05,
                   workload=WorkloadSpec(arrival="fixed:2", prompt_len="fixed:4", output_len="fixed:8",
                                         max_concurrency=2, max_seq=64))
run_daemon(cfg, sys.argv[1], None, sys.argv[2], None, None, threading.Event())
"""


def test_killed_daemon_is_reported_and_its_trace_reads_up_to_the_kill(addr, tmp_path):
    trace = tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", DAEMON_SCRIPT, addr, str(trace)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = readline(proc.stdout, 120)   # once the daemon accepts (or dies)
        assert line.strip() == f"cgwatch daemon listening on {addr}", proc.stderr.read() if not line else line
        records, statuses = [], []
        src = LiveSource(addr)
        src.start(records.append, statuses.append)
        wait_until(lambda: sum(r["type"] == "step" for r in records) >= 3, 60, "3 steps")
        wait_until(lambda: b'"type":"step"' in trace.read_bytes(), 30, "a flushed step")   # flushed every 0.2 s
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: statuses and not statuses[-1]["connected"], 10, "disconnect")
        lost = next(s for s in statuses if not s["connected"])
        assert lost["text"].startswith("daemon lost: ") and lost["text"].endswith("; reconnecting")
        assert statuses[0]["connected"] is True and records[0]["type"] == "snapshot_begin"
        wait_until(lambda: "cannot connect" in statuses[-1]["text"], 10, "a failed reconnect")
        req = src.send("mode", "eager")
        wait_until(lambda: records[-1].get("id") == req, 5, "local ack")
        assert records[-1]["ok"] is False and records[-1]["error"] == "not connected"
        src.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    t = read_trace(trace)   # whole records up to the kill, no exception
    assert t.end is None and t.header["type"] == "header"
    assert sum(r["type"] == "step" for r in t.records) >= 1
    Daemon(addr).close()   # the dead daemon's socket file is stale: a new daemon takes the path


# ---- LiveSource on its own ----

def test_live_source_refuses_what_a_live_run_cannot_do(daemon):
    got, statuses = [], []
    src = LiveSource(daemon.address)
    src.start(got.append, statuses.append)
    wait_until(lambda: statuses and statuses[-1]["connected"], what="connected")
    seek = src.send("seek", 5)
    ok = src.send("mark", "m")
    wait_until(lambda: {seek, ok} <= {m.get("id") for m in got if m["type"] == "ack"}, what="acks")
    acks = {m["id"]: m for m in got if m["type"] == "ack"}
    assert acks[seek]["ok"] is False and acks[seek]["error"] == "not available on a live run"
    assert acks[ok]["ok"] is True
    assert got[1]["type"] == "header"   # the snapshot starts with the header: views reset on it
    src.close()


def test_clients_past_the_cap_are_told_and_a_live_source_gets_in_once_a_place_frees(daemon, monkeypatch):
    """Each client holds two threads and a queue: past MAX_CLIENTS the daemon says so in its hello and closes;
    connect() is one line, a LiveSource says it once and retries until a place frees."""
    import cgwatch.daemon as D
    monkeypatch.setattr(D, "MAX_CLIENTS", 2)
    first, second = connect(daemon.address), connect(daemon.address)
    wait_until(lambda: daemon.client_count == 2, what="two clients")
    with pytest.raises(CgwatchError, match="serves 2 clients at once, all taken"):
        connect(daemon.address)
    got, statuses = [], []
    src = LiveSource(daemon.address)
    src.start(got.append, statuses.append)
    wait_until(lambda: any("all taken" in s["text"] and s["text"].endswith("retrying") for s in statuses),
               what="the busy status")
    assert not any(s["connected"] for s in statuses) and not any(s.get("final") for s in statuses)
    first.close()
    wait_until(lambda: statuses[-1]["connected"], timeout=30, what="the source to get in")
    assert sum("all taken" in s["text"] for s in statuses) == 1   # said once, not once a retry
    src.close()
    second.close()


def fake_daemon(path: str, hello: dict) -> socket.socket:
    """A listener that greets every connection with ``hello``."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)

    def serve():
        try:
            while True:
                conn, _ = server.accept()
                conn.sendall(encode(hello))
        except OSError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    return server


def test_a_protocol_mismatch_is_a_status_not_a_crash(addr):
    server = fake_daemon(addr[5:], {"type": "hello", "protocol": 99, "cgwatch": "9.0", "control": "open"})
    statuses = []
    src = LiveSource(addr)
    src.start(lambda m: None, statuses.append)
    src._thread.join(5)
    assert not src._thread.is_alive()   # a mismatch is final: no reconnect loop
    assert len(statuses) == 1 and statuses[0]["connected"] is False and "protocol 99" in statuses[0]["text"]
    with pytest.raises(CgwatchError, match="protocol 99"):
        connect(addr)
    server.close()


def test_an_engine_that_fails_leaves_the_daemon_serving_its_history(addr, tmp_path, monkeypatch):
    """A run that dies (say, a vLLM restart that failed) ends the trace with the reason; the daemon
    keeps serving what was recorded to clients that join afterwards, until it is stopped."""
    real_step = Engine.step

    def failing_step(self):
        if self.i >= 3:
            raise RuntimeError("vLLM could not start again with the previous config: out of memory")
        return real_step(self)

    monkeypatch.setattr(Engine, "step", failing_step)
    stop, lines, result = threading.Event(), [], {}
    trace = tmp_path / "t.jsonl"

    def serve():
        try:
            run_daemon(tiny_config(), addr, None, str(trace), None, None, stop, lines.append)
        except RuntimeError as e:
            result["error"] = str(e)

    t = threading.Thread(target=serve)
    t.start()
    deadline = time.time() + 60
    while not any("serving its history" in line for line in lines) and time.time() < deadline:
        time.sleep(0.05)
    assert any("serving its history" in line for line in lines), lines
    got = []
    collect(connect(addr), lambda m: m["type"] == "end", got).join(10)   # a late joiner
    assert [m["i"] for m in got if m["type"] == "step"] == [0, 1, 2]
    assert got[-1]["type"] == "end" and got[-1]["outcome"] == "error"
    assert any(m.get("kind") == "alert" and "out of memory" in m.get("message", "") for m in got)
    assert t.is_alive()
    stop.set()
    t.join(10)
    assert "out of memory" in result["error"]
    tr = read_trace(trace)
    assert tr.end["outcome"] == "error"


def test_attach_to_another_service_names_the_address_and_says_it_is_no_daemon(addr, capsys):
    """An SSH server on the port got 'cgwatch: invalid JSON: Expecting value at column 1'."""
    from cgwatch.cli import main
    server = socket.socket(socket.AF_UNIX)
    server.bind(addr[5:])
    server.listen(4)

    def serve():
        try:
            while True:
                conn, _ = server.accept()
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        except OSError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    try:
        assert main(["attach", addr]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"cgwatch: {addr}: not a cgwatch daemon (its first line")
    finally:
        server.close()
