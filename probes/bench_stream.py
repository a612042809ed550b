"""Benchmark: how many events per second the daemon streams to TUI-side clients without slowing
the loop that publishes them (target: >= 5,000 steps/s).

    python3 probes/bench_stream.py                       # all cases, a markdown table (~1.5 min)
    python3 probes/bench_stream.py --json stream.json    # the same, plus the raw numbers

The loop: a synthetic decode loop in this process's main thread builds real step records
(``records.step``, the batch/bucket/timing values of the bundled H100 trace, cycled) and a sample
record every 0.25 s, and hands each to ``Daemon.publish`` on a fixed schedule: step k is due at
start + k / rate; while ahead, it sleeps until due (no spinning: on a 2-core machine a spinning
loop would take a core from the clients); a late step goes out at once, so lateness never adds up.
"unpaced" publishes as fast as the loop can. Each case runs on a fresh daemon (unix socket, default
queue of 10,000 records per client).

The clients: separate processes (this script with ``--client``), each a ``LiveSource`` whose
records go into an inbox that is folded into ``cgwatch.tui.state.ViewState`` every 0.1 s, the way
``CgwatchApp.flush`` does it, without a screen. They count what they received, the ``dropped``
notices, and the delay from a step's ``t`` to its arrival (same monotonic clock), and print one
JSON line when the run's ``end`` record arrives.

Reported per case: the loop's achieved steps/s, whether it kept >= 99% of the target, and how far
the worst step fell behind its schedule (sleep overshoot, GIL waits); the cost of ``publish``
(median, p99, max, timed around the call; the encoding and sending happen later, in the daemon's
sender threads of the same process, and show in its CPU); steps received and records dropped per
client; delivery delay; the CPU of the loop process (loop + sender threads) and of each client, and
of every other process (they compete for the same cores). Timings are for reading, never
assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

from cgwatch import records as R
from cgwatch.measure.host import cpu_seconds_by_pid

SAMPLE_EVERY_S = 0.25
FOLD_EVERY_S = 0.1          # CgwatchApp's REFRESH_S
LATENCY_EVERY = 8           # clients time every 8th step's delivery
CLIENT_TIMEOUT_S = 60.0


def _pct(sorted_vals: list, p: float):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[k]




def _others_pct(before: dict[int, float], after: dict[int, float], wall: float) -> float:
    return round(100.0 * sum(t - before.get(pid, 0.0) for pid, t in after.items()) / wall, 1)


# ---- the client process ------------------------------------------------------------------------

def client_main(addr: str, base: float) -> None:
    from cgwatch.client import LiveSource
    from cgwatch.protocol import DROPPED, SNAPSHOT_END
    from cgwatch.tui.state import ViewState

    inbox: deque = deque()
    ended = threading.Event()
    lost = threading.Event()
    lat: list[float] = []
    mono = time.monotonic

    def on_record(msg: dict) -> None:   # LiveSource's thread
        typ = msg.get("type")
        if typ == R.STEP and msg["i"] % LATENCY_EVERY == 0:
            lat.append(mono() - base - msg["t"])
        inbox.append(msg)
        if typ == SNAPSHOT_END:
            print("ready", flush=True)
        elif typ == R.END:
            ended.set()

    def on_status(status: dict) -> None:
        if not status.get("connected"):
            lost.set()

    state = ViewState()
    counts = {"steps": 0, "samples": 0, "records": 0, "dropped": 0}
    max_inbox = 0
    max_fold_ms = 0.0

    def fold_all() -> None:
        nonlocal max_inbox, max_fold_ms
        t0 = time.perf_counter()
        max_inbox = max(max_inbox, len(inbox))
        fold = state.fold
        while inbox:
            rec = inbox.popleft()
            typ = rec.get("type")
            if typ == R.STEP:
                counts["steps"] += 1
            elif typ == R.SAMPLE:
                counts["samples"] += 1
            elif typ == DROPPED:
                counts["dropped"] = max(counts["dropped"], int(rec.get("count") or 0))
            counts["records"] += 1
            fold(rec)
        max_fold_ms = max(max_fold_ms, (time.perf_counter() - t0) * 1e3)

    src = LiveSource(addr, reconnect=False)
    cpu0 = os.times()
    src.start(on_record, on_status)
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not (ended.is_set() or lost.is_set()) and time.monotonic() < deadline:
        fold_all()
        ended.wait(FOLD_EVERY_S)
    fold_all()
    cpu1 = os.times()
    src.close()
    lat.sort()
    print(json.dumps({**counts, "folded_steps": state.steps, "ended": ended.is_set(),
                      "cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 3),
                      "max_inbox": max_inbox, "max_fold_ms": round(max_fold_ms, 2),
                      "delivery_ms_p50": None if not lat else round(_pct(lat, 50) * 1e3, 2),
                      "delivery_ms_p99": None if not lat else round(_pct(lat, 99) * 1e3, 2)}), flush=True)


# ---- the loop ------------------------------------------------------------------------------------

def load_pattern() -> tuple[dict, list[tuple], dict]:
    """The bundled H100 trace's header, its steps' values, one of its sample records."""
    from cgwatch.samples import sample_path
    from cgwatch.trace import read_trace
    tr = read_trace(sample_path())
    steps = [(r["batch"], r["target"], r["bucket"], r["reason"], r["host_us"], r["gpu_ms"], r["tokens"])
             for r in tr.records if r["type"] == R.STEP]
    sample = next(r for r in tr.records if r["type"] == R.SAMPLE)
    return tr.header, steps, sample


def run_case(rate: float | None, nclients: int, duration: float, sock_dir: str, k: int,
             header: dict, pattern: list[tuple], sample: dict) -> dict:
    from cgwatch.daemon import Daemon

    addr = f"unix:{os.path.join(sock_dir, f'd{k}.sock')}"
    base = time.monotonic()
    daemon = Daemon(addr, None).start(header, None)
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(nclients):
            procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--client", addr,
                                           "--base", repr(base)], stdout=subprocess.PIPE, text=True))
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"client did not start: {line!r}")
        while any(c["queued"] for c in daemon.client_stats()):
            time.sleep(0.01)

        publish, step, mono, pns, sleep = daemon.publish, R.step, time.monotonic, time.perf_counter_ns, time.sleep
        n_pat = len(pattern)
        costs: list[int] = []
        cost = costs.append
        interval = 1.0 / rate if rate else 0.0
        i = n_samples = 0
        max_late = 0.0
        ours = {os.getpid(), *(p.pid for p in procs)}
        others0 = cpu_seconds_by_pid(ours)
        cpu0 = os.times()
        t0 = mono()
        end = t0 + duration
        next_sample = t0 + SAMPLE_EVERY_S
        while True:
            now = mono()
            if now >= end:
                break
            if rate:
                due = t0 + i * interval
                if now < due:
                    sleep(due - now)
                    now = mono()
                elif now - due > max_late:
                    max_late = now - due
            batch, target, bucket, reason, host_us, gpu_ms, tokens = pattern[i % n_pat]
            rec = step(i, now - base, batch, target, bucket, reason, host_us, gpu_ms, tokens)
            s = pns()
            publish(rec)
            cost(pns() - s)
            i += 1
            if now >= next_sample:
                rec = dict(sample, t=round(now - base, 6))
                s = pns()
                publish(rec)
                cost(pns() - s)
                n_samples += 1
                next_sample += SAMPLE_EVERY_S
        t1 = mono()
        cpu1 = os.times()
        others1 = cpu_seconds_by_pid(ours)
        server = daemon.client_stats()
        daemon.publish({"type": R.END, "outcome": "completed", "t": round(t1 - base, 6)})
        daemon.close(drain_s=20.0)
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=CLIENT_TIMEOUT_S)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            outs.append(json.loads(lines[-1]) if lines else {"error": f"no result (exit {p.returncode})"})
    finally:
        daemon.close(drain_s=0.0)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    wall = t1 - t0
    costs.sort()
    achieved = i / wall
    return {
        "target_steps_s": rate, "clients": nclients, "duration_s": round(wall, 3),
        "steps": i, "samples": n_samples, "achieved_steps_s": round(achieved, 1),
        "kept_rate": None if rate is None else achieved >= 0.99 * rate,
        "max_late_ms": round(max_late * 1e3, 2) if rate else None,
        "publish_us_p50": round(_pct(costs, 50) / 1e3, 2), "publish_us_p99": round(_pct(costs, 99) / 1e3, 2),
        "publish_us_max": round(costs[-1] / 1e3, 1),
        "loop_process_cpu_pct": round(100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / wall, 1),
        "other_processes_cpu_pct": _others_pct(others0, others1, wall),
        "server_dropped": [c["dropped"] for c in server],
        "client_results": outs,
        "client_cpu_pct": [None if "cpu_s" not in o else round(100.0 * o["cpu_s"] / wall, 1) for o in outs],
    }


def fmt_rate(rate: float | None) -> str:
    return "unpaced" if rate is None else f"{rate:,.0f}"


def table(rows: list[dict]) -> str:
    out = ["| target steps/s | clients | achieved steps/s | kept rate (≥99%) | worst lateness ms "
           "| publish µs p50 / p99 / max | steps received per client | drops per client | delivery ms p50 / p99 "
           "| loop proc CPU % | client CPU % |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cl = r["client_results"]
        recv = ", ".join(f"{o.get('steps', 0):,} ({100.0 * o.get('steps', 0) / r['steps']:.1f}%)" for o in cl) or "–"
        drops = ", ".join(f"{o.get('dropped', 0):,}" for o in cl) or "–"
        lat = ", ".join(f"{o['delivery_ms_p50']} / {o['delivery_ms_p99']}" if o.get("delivery_ms_p50") is not None
                        else "n/a" for o in cl) or "–"
        ccpu = ", ".join(f"{c}" for c in r["client_cpu_pct"]) or "–"
        kept = "–" if r["kept_rate"] is None else ("yes" if r["kept_rate"] else "**no**")
        late = "–" if r["max_late_ms"] is None else f"{r['max_late_ms']:.1f}"
        ended = "" if all(o.get("ended") for o in cl) else " (a client missed `end`)"
        out.append(f"| {fmt_rate(r['target_steps_s'])} | {r['clients']} | {r['achieved_steps_s']:,.0f} | {kept} | {late} "
                   f"| {r['publish_us_p50']:.1f} / {r['publish_us_p99']:.1f} / {r['publish_us_max']:,.0f} | {recv} "
                   f"| {drops}{ended} | {lat} "
                   f"| {r['loop_process_cpu_pct']} | {ccpu} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="2000,5000,10000,20000,40000,unpaced",
                    help="target steps/s, comma-separated; 'unpaced' = as fast as possible (default %(default)s)")
    ap.add_argument("--clients", default="0,1,2", help="client counts (default %(default)s)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds of loop per case (default %(default)s)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    ap.add_argument("--client", metavar="ADDR", help=argparse.SUPPRESS)
    ap.add_argument("--base", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        client_main(a.client, a.base)
        return

    rates = [None if r.strip() == "unpaced" else float(r) for r in a.rates.split(",")]
    counts = [int(c) for c in a.clients.split(",")]
    header, pattern, sample = load_pattern()
    rows = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cgw-bench-") as sock_dir:
        k = 0
        for rate in rates:
            for n in counts:
                k += 1
                r = run_case(rate, n, a.duration, sock_dir, k, header, pattern, sample)
                rows.append(r)
                cl = r["client_results"]
                lost = [o for o in cl if o.get("steps", 0) + o.get("dropped", 0) < r["steps"]]
                print(f"# {fmt_rate(rate)} steps/s, {n} clients: {r['achieved_steps_s']:,.0f} steps/s, publish p50 "
                      f"{r['publish_us_p50']} µs, drops {[o.get('dropped') for o in cl]} (daemon, before `end`: "
                      f"{r['server_dropped']})"
                      + (f"  UNACCOUNTED: {lost}" if lost else "")
                      + ("  a client never got the `end` record (dropped with its queue full)"
                         if not all(o.get("ended") for o in cl) else ""), file=sys.stderr, flush=True)
    total = time.monotonic() - t_start
    others = [r["other_processes_cpu_pct"] for r in rows]
    print(f"cgwatch stream benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{a.duration:g} s per case, {total:.0f} s in all; other processes used {min(others)}-{max(others)}% "
          f"of a core during the cases\n")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpus": os.cpu_count(), "python": platform.python_version(), "duration_s": a.duration,
                       "date": time.strftime("%Y-%m-%d"), "cases": rows}, f, indent=1)
        print(f"\nraw numbers: {a.json}")


if __name__ == "__main__":
    main()
