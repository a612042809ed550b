"""CPU threads on a small CPU machine: a headless run and a daemon with a client, under a given thread
choice. Not a test: numbers for docs/BENCHMARKS.md.

    python probes/cpu_threads.py --case before=/tmp/old-checkout --case after=. \
        --case "after --threads 2=.:--threads 2" --case "before OMP=1=/tmp/old-checkout::1"

A case is LABEL=ROOT[:FLAGS[:OMP_NUM_THREADS]]: the checkout to run, extra flags, the environment.
The cases take turns, ``--repeat`` rounds (a busy machine's load drifts; turns spread it evenly); the
table gives the median and the range of each:
  headless: wall seconds of ``cgwatch run --headless --steps 20 --max-concurrency 8 --max-seq 256``
            (process start to exit, imports and model load included), and the run's own seconds;
  daemon:   steps/s of ``cgwatch daemon`` (same flags, no --steps) over 10 s while a client folds every
            record into the TUI's ViewState, as a TUI does.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

FLAGS = ["--model", "tiny", "--max-concurrency", "8", "--max-seq", "256"]


def boot(root: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {os.path.abspath(root)!r}); from cgwatch.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def headless(root: str, extra: list[str], env: dict) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = subprocess.run([*boot(root), "run", "--headless", "--steps", "20", *FLAGS, *extra], capture_output=True,
                         text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    m = re.search(r"completed: 20 steps, \d+ tokens in ([\d.]+) s", out.stdout)
    if not m:
        raise SystemExit(f"headless run failed: {out.stderr[-500:]}")
    return wall, float(m.group(1))


def daemon_steps_per_s(root: str, extra: list[str], env: dict, seconds: float = 10.0) -> float:
    sys.path.insert(0, os.path.abspath(root))
    from cgwatch.client import connect
    from cgwatch.tui.state import ViewState
    d = tempfile.mkdtemp(prefix="cgp", dir="/tmp")
    addr = f"unix:{d}/d.sock"
    p = subprocess.Popen([*boot(root), "daemon", *FLAGS, *extra, "--listen", addr], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = p.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"daemon did not start: {line!r}")
        conn = connect(addr)
        state, steps = ViewState(), []

        def read():
            try:
                while (msg := conn.recv(30)) is not None:
                    state.fold(msg)
                    if msg.get("type") == "step":
                        steps.append(time.monotonic())
            except OSError:
                pass   # closed at the end

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 120
        while not steps and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        time.sleep(seconds)
        n = sum(1 for t in list(steps) if t >= t0)
        conn.close()
        return n / seconds
    finally:
        p.terminate()
        p.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", required=True, metavar="LABEL=ROOT[:FLAGS[:OMP]]")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    cases = []
    for spec in a.case:
        label, _, rest = spec.partition("=")
        root, _, rest = rest.partition(":")
        flags, _, omp = rest.partition(":")
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if omp:
            env["OMP_NUM_THREADS"] = omp
        cases.append((label, root, flags.split(), env, {"wall": [], "run": [], "rate": []}))
    loads = [os.getloadavg()[0]]
    for _ in range(a.repeat):
        for label, root, flags, env, got in cases:
            w, r = headless(root, flags, env)
            got["wall"].append(w)
            got["run"].append(r)
            got["rate"].append(daemon_steps_per_s(root, flags, env))
            loads.append(os.getloadavg()[0])
    fmt = lambda xs, f: f"{statistics.median(xs):{f}} ({min(xs):{f}}-{max(xs):{f}})"   # noqa: E731
    print(f"nproc {os.cpu_count()}, loadavg (1 min) {min(loads):.2f}-{max(loads):.2f} during the runs")
    print("| case | headless 20 steps: wall s | run s | daemon + client: steps/s |")
    print("|---|---|---|---|")
    for label, _, _, _, got in cases:
        print(f"| {label} | {fmt(got['wall'], '.1f')} | {fmt(got['run'], '.2f')} | {fmt(got['rate'], '.1f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
