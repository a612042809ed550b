"""Run a TUI command in a pseudo-terminal, as a person would in a terminal, where no tmux is at hand
(the GPU machine): keys at given seconds, and Textual's own screenshot (TEXTUAL_SCREENSHOT) after N
seconds, which also ends the app the way ``q`` does. Used for the README's screenshot of a real
``cgwatch run --backend vllm`` (daemon child + TUI) on the GPU machine.

    python3 probes/tui_pty.py --size 140x45 --key 60:g --key 90:g --screenshot-after 130 \
        --out $OUT/tui.svg -- cgwatch run --backend vllm --model llama-1b
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="140x45")
    ap.add_argument("--key", action="append", default=[], metavar="SECONDS:KEYS",
                    help="send KEYS (text; \\r for Enter) this many seconds after the start")
    ap.add_argument("--screenshot-after", type=int, required=True, help="seconds after the app is ready")
    ap.add_argument("--out", required=True, help="SVG path")
    ap.add_argument("--timeout", type=float, default=480)
    ap.add_argument("--log", default=None, help="write the terminal output here")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    cols, rows = map(int, a.size.split("x"))
    keys = sorted((float(k.split(":", 1)[0]), k.split(":", 1)[1].encode().decode("unicode_escape")) for k in a.key)
    out = os.path.abspath(a.out)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", TEXTUAL_SCREENSHOT=str(a.screenshot_after),
               TEXTUAL_SCREENSHOT_LOCATION=os.path.dirname(out), TEXTUAL_SCREENSHOT_FILENAME=os.path.basename(out))
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(cmd[0], cmd, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    log = open(a.log, "wb") if a.log else None
    t0 = time.time()
    status = None
    while time.time() - t0 < a.timeout:
        while keys and time.time() - t0 >= keys[0][0]:
            os.write(fd, keys.pop(0)[1].encode())
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                break
            if log:
                log.write(data)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    else:
        os.kill(pid, signal.SIGTERM)
        print(f"tui_pty: timed out after {a.timeout:.0f} s", file=sys.stderr)
    if status is None or not os.WIFEXITED(status):
        _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    print(f"tui_pty: exit {rc} after {time.time() - t0:.0f} s; screenshot {'written' if os.path.exists(out) else 'MISSING'}: {out}")
    return 0 if os.path.exists(out) else 1


if __name__ == "__main__":
    sys.exit(main())
