"""A real terminal: `cgwatch run --model tiny` in tmux (keys g, r (edit sizes), q; its daemon killed), a replay
at 80x24, read off the pane."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cgwatch.trace import read_trace

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


SOCKET = f"cgwatch-test-{os.getpid()}"   # a private tmux server: the test always starts its own
# pytest imports readline, which exports COLUMNS=80 LINES=24; a tmux server started from here would pass
# them to the TUI, which then draws 80x24 inside the 140x45 window. The server gets an environment without.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}


def tmux(*args):
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True, env=CLEAN_ENV)


def pane(session):
    return tmux("capture-pane", "-p", "-t", session).stdout


def start(session, cmd, width, height):
    """``cmd`` in a new tmux session of width x height (the private server starts if it must)."""
    tmux("kill-session", "-t", session)
    assert tmux("new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), cmd).returncode == 0
    tmux("resize-window", "-t", session, "-x", str(width), "-y", str(height))


def wait_for(session, pred, timeout=120, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = pane(session)
        if pred(text):
            return text
        time.sleep(0.3)
    size = tmux("display-message", "-p", "-t", session, "#{window_width}x#{window_height}").stdout.strip()
    raise AssertionError(f"timed out waiting for {what or 'the pane'} (window {size}); pane:\n{pane(session)}")


def test_run_toggle_recapture_quit_in_tmux(tmp_path):
    session = f"cgwatch-test-{os.getpid()}"
    trace = tmp_path / "tmux.jsonl"
    cmd = (f"{sys.executable} -m cgwatch run --model tiny --max-seq 64 --max-concurrency 16 "
           f"--prompt-len uniform:4:8 --output-len uniform:8:32 --record {trace}; sleep 30")
    start(session, cmd, 140, 45)
    try:
        wait_for(session, lambda t: "tiny" in t and "no CUDA" in t and "sizes [1, 2, 4, 8, 16]" in t)
        tmux("send-keys", "-t", session, "g")
        wait_for(session, lambda t: "mode → eager" in t)
        tmux("send-keys", "-t", session, "r")
        wait_for(session, lambda t: "1,2,4,8,16" in t, what="the recapture dialog")   # prefilled with the sizes
        for keys in (["C-u"], ["-l", "3,12"], ["Enter"]):         # a person types, not a burst
            time.sleep(1.0)
            tmux("send-keys", "-t", session, *keys)
        wait_for(session, lambda t: "sizes [3, 12]" in t)
        wait_for(session, lambda t: any(l.split()[:1] == ["12"] for l in t.splitlines()))  # the new bucket's row
        tmux("send-keys", "-t", session, "q")
        wait_for(session, lambda t: "trace" in t and "cgwatch report" in t, timeout=90)
    finally:
        tmux("kill-server")
    daemons = subprocess.run(["pgrep", "-f", f"cgwatch daemon.*{trace}"], capture_output=True, text=True)
    assert daemons.stdout.strip() == "", "the daemon outlived the TUI"
    t = read_trace(trace)
    assert t.end is not None and t.truncated_at is None
    kinds = [r.get("kind") for r in t.records if r["type"] == "event"]
    assert "mode" in kinds and "recapture" in kinds


def test_run_says_its_daemon_was_killed_and_exits_with_why_in_tmux(tmp_path):
    """kill -9 of cgwatch run's daemon child: one readable line says so, no reconnecting, the data stays;
    q exits non-zero with the same reason, and the socket file the daemon left is gone."""
    session = f"cgwatch-kill-{os.getpid()}"
    trace = tmp_path / "kill.jsonl"
    xdg = tempfile.mkdtemp(prefix="cgx", dir="/tmp")   # where the private socket goes (short path)
    cmd = (f"XDG_RUNTIME_DIR={xdg} {sys.executable} -m cgwatch run --model tiny --max-seq 64 --max-concurrency 4 "
           f"--prompt-len uniform:4:8 --output-len uniform:4:8 --record {trace}; echo EXIT=$?; sleep 30")
    start(session, cmd, 80, 24)
    try:
        wait_for(session, lambda t: "tiny" in t and "connected to" in t, what="the TUI")
        wait_for(session, lambda t: trace.exists() and b'"type":"step"' in trace.read_bytes(), what="steps")
        def rows(text):
            return [line.split()[:3] for line in text.splitlines() if line.split()[:1] in (["1"], ["2"], ["4"])]
        wait_for(session, lambda t: "bucket  steps" in t and rows(t), what="the bucket rows")
        assert len(glob.glob(f"{xdg}/cgwatch/*.sock")) == 1
        os.kill(read_trace(trace).header["pid"], signal.SIGKILL)
        text = wait_for(session, lambda t: "⚠ the daemon was killed by SIGKILL · showing the last data" in t,
                        what="the reason")
        assert "bucket  steps" in text and rows(text)   # what was recorded stays
        time.sleep(2.0)   # no reconnecting: the line stays as it is
        assert "cannot connect" not in pane(session) and "reconnecting" not in pane(session)
        tmux("send-keys", "-t", session, "q")
        wait_for(session, lambda t: "EXIT=" in t, timeout=60, what="cgwatch run to exit")
        out = tmux("capture-pane", "-p", "-J", "-t", session).stdout   # -J: the wrapped line joined
        assert "cgwatch: the daemon was killed by SIGKILL; its log: " in out and "EXIT=1" in out, out
        assert glob.glob(f"{xdg}/cgwatch/*.sock") == []
    finally:
        tmux("kill-server")
        shutil.rmtree(xdg, ignore_errors=True)


def test_replay_sample_at_80x24_in_tmux():
    """The smallest laid-out screen in a real terminal: the header keeps the replay's position and state,
    tab shows the table's other half (status) and then the totals and the log; q quits."""
    session = f"cgwatch-small-{os.getpid()}"
    cmd = f"{sys.executable} -m cgwatch replay --sample --speed 16; sleep 30"
    start(session, cmd, 80, 24)
    try:
        text = wait_for(session, lambda t: "42.4/42.4 s end of trace" in t, timeout=60, what="the end of the replay")
        assert "run ended (completed)" in text and "waste %" in text and "status" not in text
        assert len(text.splitlines()) <= 24 and max(map(len, text.splitlines())) <= 80
        tmux("send-keys", "-t", session, "Tab")
        text = wait_for(session, lambda t: "status" in t, what="the graphs pane")
        assert sum(line.split()[-1:] == ["ok"] for line in text.splitlines()) == 11   # every bucket's status
        tmux("send-keys", "-t", session, "Tab")
        text = wait_for(session, lambda t: "events (trace time)" in t, what="the events pane")
        assert "pool 238.0 MiB" in text and "4,000 steps" in text
        tmux("send-keys", "-t", session, "q")
        wait_for(session, lambda t: "events (trace time)" not in t, timeout=30, what="the TUI to quit")
    finally:
        tmux("kill-server")
