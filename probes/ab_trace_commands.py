"""Two cgwatch checkouts side by side on the trace commands: report, recommend, export csv / pftrace / perfetto.

    python probes/ab_trace_commands.py --a /path/old --b /path/new --rounds 5 TRACE [TRACE ...]

Each command runs in a fresh child (`python -c` with the checkout first on sys.path, the venv's editable
cgwatch taken out), A and B alternating within a round so that both see the same load; a row gives the
median and min of CPU seconds (user + system, all threads), wall seconds and peak RSS. This VM's cores are
shared: compare A with B within one run, not with another run's numbers. ``--json FILE`` keeps every run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RUN = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
       "sys.path.insert(0, sys.argv.pop(1)); import cgwatch; assert cgwatch.__file__.startswith(sys.path[0]); "
       "from cgwatch import cli; sys.argv = ['cgwatch'] + sys.argv[1:]; sys.exit(cli.main())")


def commands(trace: str, out: str) -> dict[str, list[str]]:
    return {"report": ["report", trace],
            "recommend": ["recommend", trace, "--memory-budget", "256", "--max-buckets", "6"],
            "export csv": ["export", "--format", "csv", trace, "-o", out + ".csv"],
            "export pftrace": ["export", "--format", "pftrace", trace, "-o", out + ".pftrace"],
            "export perfetto": ["export", "--format", "perfetto", trace, "-o", out + ".json"]}


def child(root: str, argv: list[str]) -> dict:
    """One run: its own CPU time and peak RSS (os.wait4's rusage of that child), wall time, the load."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", RUN, root, *argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{root} {' '.join(argv)}: rc {p.returncode}: {err.strip()[-300:]}")
    return {"cpu": ru.ru_utime + ru.ru_stime, "wall": wall, "rss_mib": ru.ru_maxrss / 1024,
            "load": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="checkout A (e.g. a git worktree of the commit before)")
    ap.add_argument("--b", required=True, help="checkout B")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="report,recommend,export csv,export pftrace",
                    help="commands, comma-separated (also: export perfetto, ~1 GB of JSON a 1M-step trace)")
    ap.add_argument("--json", help="write every run here")
    ap.add_argument("traces", nargs="+")
    a = ap.parse_args()
    only = a.only.split(",")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for trace in a.traces:
            for name, argv in commands(trace, os.path.join(tmp, "out")).items():
                if name not in only:
                    continue
                for r in range(a.rounds):
                    for side, root in (("A", a.a), ("B", a.b)) if r % 2 == 0 else (("B", a.b), ("A", a.a)):
                        runs.append({"trace": os.path.basename(trace), "command": name, "side": side,
                                     **child(root, argv)})
                        for f in os.listdir(tmp):   # a fresh output each time (replacing a file costs time)
                            os.unlink(os.path.join(tmp, f))
    print(f"{'trace':<26} {'command':<15} {'side':<4} {'CPU s med (min)':>16} {'wall s med (min)':>17} {'RSS MiB':>8}")
    for trace in dict.fromkeys(x["trace"] for x in runs):
        for name in dict.fromkeys(x["command"] for x in runs):
            for side in ("A", "B"):
                xs = [x for x in runs if x["trace"] == trace and x["command"] == name and x["side"] == side]
                if not xs:
                    continue
                cpu, wall = [x["cpu"] for x in xs], [x["wall"] for x in xs]
                print(f"{trace:<26} {name:<15} {side:<4} {statistics.median(cpu):>9.2f} ({min(cpu):.2f})"
                      f" {statistics.median(wall):>10.2f} ({min(wall):.2f}) {max(x['rss_mib'] for x in xs):>8.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"a": a.a, "b": a.b, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "machine": f"{os.cpu_count()} cores", "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
