"""A live session driven through the protocol, as a client would: run the daemon (default llama-1b,
Poisson traffic), toggle eager/graph, recapture, change the padding ratio and the rate, add a mark,
and record the whole run as a trace. Prints each command's ack latency.

    python3 probes/live_session.py --model llama-1b --steps 3000 --record llama1b_live.jsonl
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from cgwatch.client import connect

PLAN = [  # (at decode step, command, value)
    (600, "mode", "eager"),
    (800, "mode", "graph"),
    (1200, "recapture", [1, 2, 4, 8, 16, 24, 32, 48, 64]),
    (1700, "padding", 0.3),
    (2100, "rate", 0.35),
    (2400, "mark", "rate 0.35"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--arrival", default="poisson:0.25")
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    sock = os.path.join(tempfile.mkdtemp(), "d.sock")
    daemon = subprocess.Popen([sys.executable, "-m", "cgwatch", "daemon", "--model", a.model, "--arrival", a.arrival,
                               "--steps", str(a.steps), "--record", a.record, "--listen", f"unix:{sock}"],
                              stdout=subprocess.PIPE, text=True)
    line = daemon.stdout.readline()
    if "listening" not in line:
        sys.exit(f"daemon did not start: {line!r}")
    conn = connect(f"unix:{sock}")
    plan, results, step = list(PLAN), [], -1
    while True:
        msg = conn.recv(timeout=30)
        if msg is None:
            break
        if msg.get("type") == "step":
            step = max(step, msg["i"])
        if plan and step >= plan[0][0]:
            at, cmd, value = plan.pop(0)
            t0 = time.perf_counter()
            req = conn.send(cmd, value)
            ack = conn.wait_ack(req, timeout=120)
            results.append((at, cmd, value, ack.get("ok"), (time.perf_counter() - t0) * 1e3, ack.get("error")))
        if not plan and step >= a.steps - 1:
            break
    conn.close()
    daemon.wait(timeout=120)
    print(f"daemon exit code {daemon.returncode}; trace {a.record}")
    print("| at step | command | value | ok | ack ms | error |\n|---|---|---|---|---|---|")
    for at, cmd, value, ok, ms, err in results:
        print(f"| {at} | {cmd} | {value} | {ok} | {ms:.1f} | {err or ''} |")


if __name__ == "__main__":
    main()
