"""Benchmark: the TUI's CPU use in a real terminal at its 10 redraws/s (target: <= 10% of one core).

    python3 probes/bench_tui_cpu.py                      # three cases, a markdown table (~1 min)
    python3 probes/bench_tui_cpu.py --json tui_cpu.json

Each case starts ``python -m cgwatch replay ...`` in a detached tmux session of 140x45 on a private
tmux server (``tmux -L``), finds the TUI's process through the pane's pid and its children, waits
``--warmup`` s, then reads that process's ``cpu_times`` (user + system) over ``--window`` s of wall
time. The tmux server's CPU (the terminal side: it parses everything the TUI draws) and the CPU of
all other processes (they compete for the same cores) are read over the same window. Cases:

- the bundled H100 trace at ``--speed 16`` (the fastest replay allows, ~1,500 steps/s). The trace
  lasts 42 s, so at 16x it is played out in 2.6 s, before a 10 s window could start; this case
  replays it ``--loops`` times back to back (times and step numbers shifted, written to a temporary
  file) so the whole window sees the stream. The literal ``replay --sample --speed 16`` is measured
  too: after its warm-up it sits at the end of the trace (auto-paused).
- the same looped trace, paused with ``p`` (``tmux send-keys``) right after the 16x window.
- ``replay --sample --speed 1`` (~95 steps/s, as recorded).

Records fed per second come from the replay position shown on screen (``×16 a/b s``) at both ends
of the window, counted in the trace; the redraw rate is read from the code (``REFRESH_S``, used by
``set_interval`` in cgwatch/tui/app.py). Each session gets ``q`` and is killed at the end, whatever
happens. Timings are for reading, never assertions.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right

import psutil

from cgwatch import jsonl
from cgwatch import records as R
from cgwatch.samples import sample_path
from cgwatch.trace import read_trace
from cgwatch.measure.host import cpu_seconds_by_pid

COLS, ROWS = 140, 45
POS_RE = re.compile(r"×([\d.]+) ([\d.]+)/([\d.]+) s")


def redraw_rate() -> tuple[float, str]:
    """Redraws/s the app uses: 1 / REFRESH_S, checked against the set_interval call in app.py."""
    from cgwatch.tui import app
    src = inspect.getsource(app.CgwatchApp)
    m = re.search(r"self\.set_interval\(([^,]+),", src)
    where = m.group(0) + "...)" if m else "set_interval not found"
    return 1.0 / app.REFRESH_S, f"REFRESH_S = {app.REFRESH_S} in cgwatch/tui/app.py, {where}"


def looped_trace(loops: int, path: str) -> None:
    """The bundled trace ``loops`` times back to back: t shifted by the trace's length, steps renumbered."""
    tr = read_trace(sample_path())
    dur = max(r["t"] for r in tr.records if isinstance(r.get("t"), (int, float)))
    n_steps = sum(1 for r in tr.records if r["type"] == R.STEP)
    with open(path, "w") as f:
        f.write(jsonl.dumps(tr.header) + "\n")
        for k in range(loops):
            for r in tr.records:
                r = dict(r)
                if isinstance(r.get("t"), (int, float)):
                    r["t"] = round(r["t"] + k * dur, 6)
                if r["type"] == R.STEP:
                    r["i"] += k * n_steps
                f.write(jsonl.dumps(r) + "\n")
        if tr.end:
            f.write(jsonl.dumps(dict(tr.end, t=round(loops * dur, 6))) + "\n")


class TraceIndex:
    """Counts of a trace's records (and steps) by time, for the records fed during a window."""

    def __init__(self, path: str):
        tr = read_trace(path)
        recs = tr.records + ([tr.end] if tr.end else [])
        m, self.t_all, self.t_steps = 0.0, [], []
        for r in recs:   # running maximum of t, as ReplaySource plays them
            t = r.get("t")
            if isinstance(t, (int, float)) and t > m:
                m = float(t)
            self.t_all.append(m)
            if r["type"] == R.STEP:
                self.t_steps.append(m)
        self.duration = m

    def between(self, a: float, b: float) -> tuple[int, int]:
        return (bisect_right(self.t_all, b) - bisect_right(self.t_all, a),
                bisect_right(self.t_steps, b) - bisect_right(self.t_steps, a))




class Session:
    """One detached tmux session on a private server running ``cmd``; closed with q, then killed."""

    def __init__(self, name: str, cmd: str):
        self.sock, self.name = name, name
        self.socket_path: str | None = None
        r = self.tmux("new-session", "-d", "-s", name, "-x", str(COLS), "-y", str(ROWS), "-c", os.getcwd(), cmd)
        if r.returncode:
            raise RuntimeError(f"tmux new-session failed: {r.stderr.strip()}")
        self.tui: psutil.Process | None = None
        try:
            self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").stdout.strip() or None
            self.tmux("resize-window", "-t", name, "-x", str(COLS), "-y", str(ROWS))
            self.server = psutil.Process(int(self.tmux("display-message", "-p", "-t", name, "#{pid}").stdout))
            self.pane_pid = int(self.tmux("list-panes", "-t", name, "-F", "#{pane_pid}").stdout.split()[0])
            self.tui = self._find_tui()
        except BaseException:
            self.close()
            raise

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True)

    def _find_tui(self, timeout: float = 15.0) -> psutil.Process:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pane = psutil.Process(self.pane_pid)
                for p in [pane, *pane.children(recursive=True)]:
                    cmd = p.cmdline()
                    if "cgwatch" in cmd and "replay" in cmd:
                        return p
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        raise RuntimeError(f"no cgwatch replay process under pane pid {self.pane_pid}; pane:\n{self.pane()}")

    def pane(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name).stdout

    def wait_for(self, pred, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.pane()
            if pred(text):
                return text
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for the TUI; pane:\n{self.pane()}")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def close(self) -> None:
        try:
            if self.tui is not None and self.tui.is_running():
                self.keys("q")
                self.tui.wait(timeout=5)
        except (psutil.Error, subprocess.SubprocessError):
            pass
        finally:
            self.tmux("kill-session", "-t", self.name)
            self.tmux("kill-server")
            if self.socket_path and os.path.basename(self.socket_path) == self.sock:
                try:   # tmux leaves its socket file behind; this one is ours
                    os.unlink(self.socket_path)
                except OSError:
                    pass
            try:
                if self.tui is not None and self.tui.is_running():
                    self.tui.kill()
            except psutil.Error:
                pass


def position(text: str) -> tuple[float, float] | None:
    """(speed, position s) from the replay status on screen."""
    m = POS_RE.search(text)
    return (float(m.group(1)), float(m.group(2))) if m else None


def measure(s: Session, window: float, index: TraceIndex, label: str, command: str) -> dict:
    pos0 = position(s.pane())
    ours = {os.getpid(), s.tui.pid, s.server.pid}
    oth0 = cpu_seconds_by_pid(ours)
    cpu0, srv0, w0 = sum(s.tui.cpu_times()[:2]), sum(s.server.cpu_times()[:2]), time.monotonic()
    time.sleep(window)
    cpu1, srv1, w1 = sum(s.tui.cpu_times()[:2]), sum(s.server.cpu_times()[:2]), time.monotonic()
    oth1 = cpu_seconds_by_pid(ours)
    screen = s.pane()
    pos1 = position(screen)
    wall = w1 - w0
    recs = steps = None
    if pos0 and pos1:
        n_recs, n_steps = index.between(pos0[1], pos1[1])
        recs, steps = n_recs / wall, n_steps / wall
    return {"case": label, "command": command, "window_s": round(wall, 2),
            "tui_cpu_pct": round(100.0 * (cpu1 - cpu0) / wall, 2),
            "tmux_server_cpu_pct": round(100.0 * (srv1 - srv0) / wall, 2),
            "other_processes_cpu_pct": round(100.0 * sum(t - oth0.get(pid, 0.0) for pid, t in oth1.items()) / wall, 1),
            "replay_pos_s": [pos0[1] if pos0 else None, pos1[1] if pos1 else None],
            "records_per_s": None if recs is None else round(recs, 1),
            "steps_per_s": None if steps is None else round(steps, 1),
            "pane_status": next((ln.strip() for ln in screen.splitlines() if "replay" in ln), "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before each window (default %(default)s)")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per window (default %(default)s)")
    ap.add_argument("--loops", type=int, default=8, help="copies of the trace in the looped one (default %(default)s)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    a = ap.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("needs tmux")
    hz, where = redraw_rate()
    py = sys.executable
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cgw-tui-") as tmp:
        looped = os.path.join(tmp, "llama1b_poisson_h100_looped.jsonl")
        looped_trace(a.loops, looped)
        idx_loop, idx_sample = TraceIndex(looped), TraceIndex(sample_path())
        tag = f"cgw-bench-{os.getpid()}"
        plans = [
            ("looped", f"replay <bundled trace ×{a.loops}> --speed 16", f"{py} -m cgwatch replay {looped} --speed 16",
             idx_loop),
            ("speed1", "replay --sample --speed 1", f"{py} -m cgwatch replay --sample --speed 1", idx_sample),
            ("literal16", "replay --sample --speed 16", f"{py} -m cgwatch replay --sample --speed 16", idx_sample),
        ]
        for key, shown, cmd, index in plans:
            s = None
            try:
                s = Session(f"{tag}-{key}", f"{cmd}; sleep 60")   # cleans up after itself if it fails
                s.wait_for(lambda t: position(t) is not None)
                time.sleep(a.warmup)
                if key == "looped":
                    rows.append(measure(s, a.window, index, "playing, 16× (looped trace)", shown))
                    print(f"# {rows[-1]['case']}: TUI {rows[-1]['tui_cpu_pct']}% of a core", file=sys.stderr, flush=True)
                    s.keys("p")
                    s.wait_for(lambda t: "paused" in t, timeout=5)
                    time.sleep(1.0)
                    rows.append(measure(s, a.window, index, "paused (p), same session", shown + ", then p"))
                elif key == "speed1":
                    rows.append(measure(s, a.window, index, "playing, 1× (as recorded)", shown))
                else:
                    rows.append(measure(s, a.window, index, "16× as briefed: trace over at 2.6 s, auto-paused", shown))
                print(f"# {rows[-1]['case']}: TUI {rows[-1]['tui_cpu_pct']}% of a core", file=sys.stderr, flush=True)
            finally:
                if s is not None:
                    s.close()

    print(f"cgwatch TUI CPU: {os.cpu_count()} CPUs, terminal {COLS}x{ROWS} (tmux), redraws ≤ {hz:g}/s ({where}), "
          f"{a.warmup:g} s warm-up, {a.window:g} s windows\n")
    print("| case | command | records/s fed | steps/s fed | redraw timer (Hz) | TUI CPU % of a core "
          "| tmux server CPU % | other processes CPU % |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fed = "n/a" if r["records_per_s"] is None else f"{r['records_per_s']:,.0f}"
        st = "n/a" if r["steps_per_s"] is None else f"{r['steps_per_s']:,.0f}"
        print(f"| {r['case']} | `{r['command']}` | {fed} | {st} | {hz:g} | **{r['tui_cpu_pct']:.1f}** "
              f"| {r['tmux_server_cpu_pct']:.1f} | {r['other_processes_cpu_pct']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpus": os.cpu_count(), "terminal": f"{COLS}x{ROWS}", "redraws_per_s": hz, "redraw_source": where,
                       "warmup_s": a.warmup, "window_s": a.window, "date": time.strftime("%Y-%m-%d"), "cases": rows},
                      f, indent=1)
        print(f"\nraw numbers: {a.json}")


if __name__ == "__main__":
    main()
