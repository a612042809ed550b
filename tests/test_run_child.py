"""``cgwatch run`` (TUI + daemon child) as real processes on the CPU: the child imports the same cgwatch
as its parent even where the working directory has a ``cgwatch/`` folder, and it stops with its
parent whatever ends the parent (SIGTERM, SIGHUP, SIGKILL): the trace gets its end record, the
socket file goes, and on SIGTERM / SIGHUP the terminal leaves the TUI's screen."""

import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading

import psutil
import pytest

from cgwatch.cli import daemon_child_command
from cgwatch.trace import read_trace
from waiting import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--model", "tiny", "--max-seq", "64", "--max-concurrency", "4", "--prompt-len", "uniform:4:8",
         "--output-len", "uniform:4:8", "--sample-interval", "0.1"]
# the parent imports this checkout's cgwatch whatever the working directory holds (as an installed
# console script does); what the test is about is the child it starts
BOOT = f"import sys; sys.path.insert(0, {ROOT!r}); from cgwatch.cli import main; sys.exit(main())"


def decoy(where) -> str:
    """A directory holding a ``cgwatch/`` folder that is not cgwatch (the parent of a clone, say)."""
    os.makedirs(os.path.join(where, "cgwatch"))
    with open(os.path.join(where, "cgwatch", "__init__.py"), "w") as f:
        f.write("raise ImportError('the decoy cgwatch folder was imported')\n")
    return str(where)


def test_the_daemon_child_imports_the_parents_cgwatch(tmp_path):
    cwd = decoy(tmp_path)
    old = subprocess.run([sys.executable, "-m", "cgwatch", "daemon", "--help"], cwd=cwd, capture_output=True, text=True,
                         timeout=120)
    assert old.returncode != 0 and "decoy" in old.stderr   # what `python -m cgwatch` does here
    out = subprocess.run([*daemon_child_command(), "--help"], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--listen" in out.stdout, out.stderr


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_the_daemon_child_stops_with_cgwatch_run(tmp_path, sig):
    cwd = decoy(tmp_path / "clone-parent")
    trace = tmp_path / "run.jsonl"
    xdg = tempfile.mkdtemp(prefix="cgx", dir="/tmp")   # where the private socket goes (short path)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", XDG_RUNTIME_DIR=xdg)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    parent = subprocess.Popen([sys.executable, "-c", BOOT, "run", *SMALL, "--record", str(trace)], cwd=cwd, env=env,
                              stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    screen = bytearray()

    def drain():   # read the terminal as a person's terminal would, so the TUI never blocks on output
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    child = None
    try:
        sock = os.path.join(xdg, "cgwatch", f"daemon-{parent.pid}.sock")
        wait_until(lambda: trace.exists() and b'"type":"step"' in trace.read_bytes() or parent.poll() is not None,
                   240, "the daemon's first steps")
        assert parent.poll() is None, bytes(screen)[-2000:]
        child = read_trace(trace).header["pid"]
        assert os.path.exists(sock) and not gone(child)
        wait_until(lambda: b"tiny" in screen, 120, "the TUI")   # the screen is up (alternate screen)
        assert b"\x1b[?1049h" in screen
        parent.send_signal(sig)
        parent.wait(90)
        wait_until(lambda: gone(child), 90, "the daemon child to stop")
        t = read_trace(trace)
        assert t.end is not None and t.end["outcome"] == "interrupted" and t.truncated_at is None
        assert not os.path.exists(sock)
        if sig != signal.SIGKILL:   # the terminal left the TUI's screen (SIGKILL leaves no one to do it)
            wait_until(lambda: b"\x1b[?1049l" in screen, 30, "the terminal restored")
            assert parent.returncode == 128 + sig
    finally:
        for pid in (parent.pid, child):
            if pid is not None and not gone(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(30)
        os.close(master)
        shutil.rmtree(xdg, ignore_errors=True)
