"""The compact trace format, measured (docs/BENCHMARKS.md, "Trace format"): synthesize realistic traces of
1M and 10M steps, then size per step, the recording thread's cost per record, report / recommend / export /
convert time and peak memory (each in a child process), replay open and seek, and what a SIGKILL loses.

    python probes/trace_bench.py --steps 1000000,10000000 --out /tmp/tb       # all of it (minutes)
    python probes/trace_bench.py --steps 100000 --only size,report            # a quick look
    python probes/trace_bench.py --steps 1000000 --ranks 2 --only report      # a tensor-parallel trace

The synthetic run looks like the samples: ~150 steps/s of a llama-1b-like decode loop, batches from a
slowly moving Poisson mix (1..70: a few over the largest size), graphs for 7 sizes, a recapture to 11 sizes
at 40%, eager windows (eager_mode) and a few padding_ratio misses, gap_us on back-to-back steps, a sample
every 100 ms, a prefill before ~20% of the steps, and a few thousand events (marks, alerts, mode switches).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cgwatch import columnar as C  # noqa: E402
from cgwatch import records as R  # noqa: E402

SIZES1 = [1, 2, 4, 8, 16, 32, 64]
SIZES2 = [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
CHUNK = 1_000_000
HEADER = {"type": "header", "format": "cgwatch-trace", "version": 1, "cgwatch": "0.1.0", "gpu": "synthetic H100",
          "torch": "2.13.0", "dtype": "bfloat16", "backend": "pytorch", "model": {"name": "llama-1b"},
          "config": {"capture_sizes": SIZES1, "max_padding_ratio": 0.5}, "workload": {"max_concurrency": 64}}


def _capture_events(t: float, sizes: list[int]) -> list[dict]:
    out = []
    for b in sorted(sizes, reverse=True):
        out.append(R.event(R.EV_CAPTURE, t, bucket=b, ok=True, capture_s=0.12, pool_bytes=(b == 64) * 140 << 20,
                           nvml_bytes=(b == 64) * 142 << 20, kernels=759, check={"tokens_equal": True, "rel_err": 0.0},
                           cause=None, hint=None, error=None))
        t += 0.12
    out.append(R.event(R.EV_CAPTURE_DONE, t, sizes=sizes, failed=[], pool_bytes=150 << 20, seconds=1.2,
                       pool="shared", pools=1))
    return out


def synth(steps: int, seed: int = 0):
    """Yield (step columns, other records) chunk by chunk: numpy columns for the steps, dicts for the rest."""
    rng = np.random.default_rng(seed)
    t0 = 1.8
    i0 = 0
    recap = int(steps * 0.4)
    for start in range(0, steps, CHUNK):
        n = min(CHUNK, steps - start)
        i = np.arange(start, start + n)
        lam = 30 + 18 * np.sin(i / 40_000.0)
        batch = np.clip(rng.poisson(lam), 1, 70)
        sizes = np.where(i < recap, 0, 1)
        s1, s2 = np.array(SIZES1), np.array(SIZES2)
        t1 = s1[np.minimum(np.searchsorted(s1, batch), len(s1) - 1)]
        t2 = s2[np.minimum(np.searchsorted(s2, batch), len(s2) - 1)]
        target = np.where(sizes == 0, t1, t2)
        over = batch > 64
        eager_mode = (i % 200_000) < 3_000                       # eager windows
        pad = (~over) & (~eager_mode) & (rng.random(n) < 0.002)  # a few padding_ratio misses
        eager = over | eager_mode | pad
        bucket = np.where(eager, -1, target)
        reason = np.where(over, 1, np.where(eager_mode, 0, np.where(pad, 2, -1)))
        gpu = np.round(np.where(eager, 14.0 + 0.03 * batch, 2.7 + 0.035 * target) + rng.normal(0, 0.03, n), 4)
        host = np.round(np.where(eager, gpu * 1000 - 30, rng.lognormal(np.log(90), 0.3, n)), 2)
        gap = np.round(np.where(eager, rng.uniform(50, 90, n), rng.exponential(1.3, n)), 1)
        prefill = rng.random(n) < 0.2
        gap_null = prefill | (rng.random(n) < 0.01)
        dt = gpu / 1000 + np.where(prefill, 0.004, 0.0) + np.where(gap_null, 0.0, gap / 1e6)
        t_us = np.round((t0 + np.cumsum(dt) - dt) * 1e6).astype(np.int64)
        t0 = float(t_us[-1] / 1e6 + dt[-1])
        cols = {"i": i, "t_us": t_us, "batch": batch, "target": np.where(over, -1, target), "bucket": bucket,
                "reason": reason, "host_us": host, "gpu_ms": gpu, "gap_us": np.where(gap_null, np.nan, gap),
                "prefill": prefill}
        others: list[dict] = []
        if start == 0:
            others += _capture_events(0.2, SIZES1)
        tt = t_us / 1e6
        if start <= recap < start + n:
            tr = float(tt[recap - start]) - 1e-6
            others.append(R.event(R.EV_RECAPTURE, tr, sizes=SIZES2, old=SIZES1, dropped=[]))
            others.append(R.event(R.EV_RELEASE, tr, freed_bytes=150 << 20, pool_bytes=150 << 20))
            others += _capture_events(tr, SIZES2)
        for k in np.flatnonzero((i % 200_000 == 0) | (i % 200_000 == 3_000)):
            others.append(R.event(R.EV_MODE, float(tt[k]) - 1e-6, mode="eager" if i[k] % 200_000 == 0 else "graph"))
        for k in np.flatnonzero(i % 2_000 == 1_000):
            others.append(R.event(R.EV_MARK, float(tt[k]) - 1e-6, text=f"mark {i[k]}"))
        for k in np.flatnonzero(i % 5_000 == 2_500):
            others.append(R.alert(float(tt[k]) - 1e-6, "padding waste over 30% in bucket 64"))
        ts = np.arange(np.ceil(tt[0] * 10), np.floor(tt[-1] * 10) + 1) / 10
        util = rng.integers(40, 95, len(ts))
        for k, ts_k in enumerate(ts):
            others.append({"type": "sample", "t": round(float(ts_k), 6), "gpu_util": int(util[k]), "mem_util": 30,
                           "mem_used_bytes": 20401094656, "mem_total_bytes": 85520809984,
                           "power_w": round(300 + float(util[k]) * 1.3, 3), "sm_clock_mhz": 1980,
                           "cpu_pct": round(99 + float(util[k]) / 50, 1), "rss_bytes": 2147483648,
                           "torch_allocated_bytes": 17179869184, "torch_reserved_bytes": 19327352832,
                           "gpu_busy": round(float(util[k]) / 100, 3)})
        i0 += n
        yield cols, others


REASONS = [R.REASON_EAGER_MODE, R.REASON_OVER_MAX, R.REASON_PADDING]


def step_batch(cols: dict) -> pa.RecordBatch:
    """The steps of a chunk as table rows, with a prefill row before each step that had one (t - 4 ms)."""
    n = len(cols["i"])
    eager = cols["bucket"] < 0
    reason = np.array([None] + REASONS, dtype=object)[cols["reason"] + 1]
    data = {
        "type": pa.array(np.full(n, "step", dtype=object)), "t_us": pa.array(cols["t_us"]), "i": pa.array(cols["i"]),
        "batch": pa.array(cols["batch"], pa.int32()), "rows": pa.array(cols["batch"], pa.int32()),
        "target": pa.array(cols["target"], pa.int32(), mask=cols["target"] < 0),
        "bucket": pa.array(cols["bucket"], pa.int32(), mask=eager),
        "mode": pa.array(np.where(eager, "eager", "graph").astype(object)),
        "runtime_mode": pa.array(np.where(eager, "NONE", "FULL").astype(object)),
        "reason": pa.array(reason, pa.string()),
        "padded": pa.array(np.where(eager, 0, cols["bucket"] - cols["batch"]), pa.int32()),
        "host_us": pa.array(cols["host_us"]), "gpu_ms": pa.array(cols["gpu_ms"]),
        "gap_us": pa.array(cols["gap_us"], mask=np.isnan(cols["gap_us"])),
        "tokens": pa.array(cols["batch"], pa.int32()), "phase": pa.array(np.full(n, "decode", dtype=object)),
        "prompt_tokens": pa.array(np.zeros(n, np.int32)), "absent": pa.array(np.zeros(n, np.int32)),
    }
    steps = _table(data, n)
    pf = np.flatnonzero(cols["prefill"])
    m = len(pf)
    pre = _table({"type": pa.array(np.full(m, "prefill", dtype=object)),
                  "t_us": pa.array(cols["t_us"][pf] - 4000), "i": pa.array(cols["i"][pf]),
                  "requests": pa.array(np.ones(m, np.int32)), "tokens": pa.array(np.full(m, 128, np.int32)),
                  "host_ms": pa.array(np.full(m, 3.9)), "absent": pa.array(np.zeros(m, np.int32))}, m)
    return pa.concat_tables([steps, pre]).sort_by([("t_us", "ascending")])


def _table(data: dict, n: int) -> pa.Table:
    arrays = [data.get(f.name, pa.nulls(n, f.type)).cast(f.type) for f in C.SCHEMA]
    return pa.Table.from_arrays(arrays, schema=C.SCHEMA)


def with_ranks(recs: list[dict], ranks: int, rng) -> list[dict]:
    """The records as a tensor-parallel run of ``ranks`` writes them (engine/rank_merge.py, measure/sampler.py):
    steps get plan_us, rank_ms (rank 0's gpu_ms, the others a little off) and skew_ms; samples get gpus."""
    for rec in recs:
        if rec["type"] == "step":
            ms = [rec["gpu_ms"]] + [round(rec["gpu_ms"] + abs(float(x)), 4) for x in rng.normal(0, 0.02, ranks - 1)]
            rec["plan_us"] = round(float(rng.lognormal(np.log(25), 0.2)), 2)
            rec["rank_ms"] = ms
            rec["skew_ms"] = round(max(ms) - min(ms), 4)
        elif rec["type"] == "sample":
            rec["gpus"] = [{"gpu": g, "gpu_util": rec["gpu_util"] - g, "mem_util": rec["mem_util"],
                            "mem_used_bytes": rec["mem_used_bytes"] + g * 4096, "mem_total_bytes": rec["mem_total_bytes"],
                            "power_w": rec["power_w"], "sm_clock_mhz": rec["sm_clock_mhz"]} for g in range(ranks)]
    return recs


def write_compact(path: str, steps: int, ranks: int = 1) -> int:
    """The synthetic trace as a compact file (rows in t order); returns its rows. ``ranks`` > 1: with the
    tensor-parallel fields (encoded from records: as columns, or as JSON where the table has none)."""
    end_t = [0.0]
    rng = np.random.default_rng(1)

    def batches():
        for cols, others in synth(steps):
            t = pa.concat_tables([step_batch(cols), pa.Table.from_batches([C.encode(others)])])
            t = t.take(pc_fill_t(t))
            if ranks > 1:
                for b in t.to_batches(max_chunksize=C.COMPACT_ROWS):
                    yield C.encode(with_ranks(C.decode(b), ranks, rng))
            else:
                yield from t.to_batches()
            end_t[0] = float(cols["t_us"][-1] / 1e6 + 0.01)
        yield [{"type": "end", "t": round(end_t[0], 6), "steps": steps, "tokens": 0, "duration_s": end_t[0],
                "outcome": "completed"}]
    return C.write_table(path, HEADER, batches())


def pc_fill_t(t: pa.Table) -> np.ndarray:
    """Row order by t (rows without t_us: the JSON rows, by their own t)."""
    key = t.column("t_us").to_numpy(zero_copy_only=False).astype(float)
    for k in np.flatnonzero(np.isnan(key)):
        key[k] = round(json.loads(t.column("json")[int(k)].as_py())["t"] * 1e6)
    return np.argsort(key, kind="stable")


# ---- measurements ----

def child(cmd: list[str]) -> dict:
    """Wall s, CPU s (user + system), peak RSS MiB and exit code of a command run in a fresh child, with the
    load average before it (the machine may be shared)."""
    code = ("import resource,subprocess,sys,time;t=time.perf_counter();"
            "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL).returncode;"
            "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
            "print(time.perf_counter()-t,u.ru_utime+u.ru_stime,u.ru_maxrss,r)")
    load = os.getloadavg()[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}   # .pyc as installed
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return {"wall_s": round(float(out[0]), 2), "cpu_s": round(float(out[1]), 2), "rss_mib": round(int(out[2]) / 1024),
            "rc": int(out[3]), "load": round(load, 1)}


def cg(*args: str) -> list[str]:
    return [sys.executable, "-m", "cgwatch", *args]


def write_cost(n: int = 200_000) -> dict:
    """CPU time of TraceWriter.write per record in the calling thread (the engine's), both formats."""
    from cgwatch.trace import TraceWriter
    cols, others = next(synth(n))
    recs = []
    for k in range(n):
        recs.append(R.step(int(cols["i"][k]), cols["t_us"][k] / 1e6, int(cols["batch"][k]),
                           None if cols["target"][k] < 0 else int(cols["target"][k]),
                           None if cols["bucket"][k] < 0 else int(cols["bucket"][k]),
                           None if cols["reason"][k] < 0 else REASONS[cols["reason"][k]],
                           float(cols["host_us"][k]), float(cols["gpu_ms"][k]), int(cols["batch"][k])))
    out = {}
    for ext in ("jsonl", "parquet"):
        path = f"/tmp/trace_bench_write.{ext}"
        w = TraceWriter(path, HEADER)
        c0, w0, p0 = time.thread_time(), time.perf_counter(), time.process_time()
        for rec in recs:
            w.write(rec)
        c1, w1 = time.thread_time(), time.perf_counter()
        w.flush()
        if ext != "jsonl":
            w._part._w.flush()   # what the background thread still had: its encoding counts too
        p1 = time.process_time()
        w.close()
        out[ext] = {"caller_thread_cpu_us": round((c1 - c0) / n * 1e6, 2), "caller_wall_us": round((w1 - w0) / n * 1e6, 2),
                    "all_threads_cpu_us": round((p1 - p0) / n * 1e6, 2),
                    "close_s": round(time.perf_counter() - w1, 2)}
        os.unlink(path)
    return out


def journal_size(n: int = 300_000) -> float:
    """Bytes per step of a recording before its close compacts it: one batch per 0.25 s at ~150 steps/s."""
    cols, others = next(synth(n))
    rows = C.decode(step_batch(cols))
    merged = sorted(rows + others, key=lambda r: r["t"])
    path = "/tmp/trace_bench_journal.arrows"
    w = C.StreamWriter(path, HEADER, flush_s=3600)
    per = int(len(merged) / (n / 150 / 0.25))   # records per 0.25 s
    for k in range(0, len(merged), per):
        for rec in merged[k:k + per]:
            w.write(rec)
        w.flush()
    w.close(compact=False)
    size = os.path.getsize(path)
    os.unlink(path)
    return size / n


def sigkill_loss(seconds: float = 3.0) -> dict:
    """Record at ~1,000 records/s in a child, SIGKILL it, and compare what the file holds with what it wrote."""
    path = "/tmp/trace_bench_kill.arrows"
    code = f"""
import sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from cgwatch.trace import TraceWriter
from cgwatch import records as R
w = TraceWriter({path!r}, {{"model": "synthetic"}})
t0 = time.perf_counter(); k = 0
while True:
    t = time.perf_counter() - t0
    w.write(R.step(k, t, 8, 8, 8, None, 90.0, 3.0, 8))
    print(k, t, flush=True); k += 1
    time.sleep(0.001)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    time.sleep(seconds)
    os.kill(p.pid, signal.SIGKILL)
    lines = p.stdout.read().split("\n")
    p.wait()
    last = [x.split() for x in lines if x.strip()][-1]
    from cgwatch.trace import open_trace
    tr = open_trace(path)
    steps = [r for r in tr.records if r["type"] == "step"]
    kept_t = steps[-1]["t"] if steps else 0.0
    out = {"written": int(last[0]) + 1, "in_file": len(steps), "lost_s": float(last[1]) - kept_t,
           "warnings": tr.warnings()}
    os.unlink(path)
    return out


def replay_times(path: str) -> dict:
    """The TUI's replay (ReplaySource + ViewState, headless): open, a seek at once (the index still being
    built: answered at once with partial totals, the whole ones when the index passes), the index's build,
    then the slowest of seeks to 50%, 90%, 10%, 99.9% and 30%."""
    from cgwatch.replay import ReplaySource
    from cgwatch.tui.state import ViewState
    view = ViewState()
    t0 = time.perf_counter()
    src = ReplaySource(path, start_paused=True, clock=lambda: 0.0)
    src.start(view.fold, lambda s: None)
    out = {"open_s": round(time.perf_counter() - t0, 2)}
    t1 = time.perf_counter()
    src.send("seek", 0.7 * src.duration_s - src.pos)
    out["seek_while_indexing_s"] = round(time.perf_counter() - t1, 2)
    if src._partial is not None:   # answered with the index's totals so far: the whole ones follow (poll)
        out["seek_partial"] = dict(src._partial)
        while src._partial is not None:
            time.sleep(0.02)
            src.poll()
        out["seek_whole_after_s"] = round(time.perf_counter() - t1, 2)
    if src._index is not None:
        t2 = time.perf_counter()
        src._index._thread.join()
        out["index_build_s"] = round(time.perf_counter() - t2 + t1 - t0, 2)
    got = []
    for frac in (0.5, 0.9, 0.1, 0.999, 0.3):
        t3 = time.perf_counter()
        src.send("seek", frac * src.duration_s - src.pos)
        got.append(time.perf_counter() - t3)
    out["seek_s"] = round(max(got), 3)
    out["steps_in_view"] = view.steps
    src.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="1000000")
    ap.add_argument("--out", default="/tmp/trace_bench")
    ap.add_argument("--only", default="size,write,journal,report,recommend,export,convert,replay,kill")
    ap.add_argument("--ranks", type=int, default=1, help="a tensor-parallel trace of this many ranks")
    a = ap.parse_args()
    only = set(a.only.split(","))
    import compileall   # the children run with .pyc files, as an installed cgwatch does
    compileall.compile_dir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cgwatch"),
                           quiet=1)
    os.makedirs(a.out, exist_ok=True)
    import platform
    res: dict = {"machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                            f"Python {platform.python_version()}, pyarrow {pa.__version__}",
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if "write" in only:
        res["write_cost"] = write_cost()
        print("write cost per record:", res["write_cost"], flush=True)
    if "journal" in only:
        res["journal_bytes_per_step"] = journal_size()
        print("journal bytes/step:", res["journal_bytes_per_step"], flush=True)
    if "kill" in only:
        res["sigkill"] = sigkill_loss()
        print("SIGKILL:", res["sigkill"], flush=True)
    for steps in map(int, a.steps.split(",")):
        tag = f"{steps}" if a.ranks == 1 else f"{steps}_r{a.ranks}"
        pq_path = f"{a.out}/synth_{tag}.parquet"
        ipc_path = f"{a.out}/synth_{tag}.arrows"
        r: dict = {"ranks": a.ranks, "table": C.TABLE_VERSION}
        if not os.path.exists(pq_path):
            t0 = time.perf_counter()
            write_compact(pq_path, steps, a.ranks)
            print(f"{steps:,} steps synthesized in {time.perf_counter() - t0:.1f} s", flush=True)
        if not os.path.exists(ipc_path):
            subprocess.run(cg("convert", pq_path, ipc_path), check=True, capture_output=True)
        r["parquet_bytes_per_step"] = os.path.getsize(pq_path) / steps
        r["arrows_bytes_per_step"] = os.path.getsize(ipc_path) / steps
        if "report" in only:
            r["report_parquet"] = child(cg("report", pq_path))
            r["report_arrows"] = child(cg("report", ipc_path))
        if "recommend" in only:
            r["recommend"] = child(cg("recommend", pq_path, "--memory-budget", "256", "--max-buckets", "6"))
        if "export" in only and steps <= 1_000_000:
            for fmt, ext in (("csv", "csv"), ("perfetto", "json"), ("pftrace", "pftrace")):
                out = f"{a.out}/x.{ext}"
                if os.path.exists(out):
                    os.unlink(out)   # (a rename over an old file makes ext4 flush it: seconds, not ours)
                r[f"export_{fmt}"] = child(cg("export", pq_path, "--format", fmt, "-o", out))
                if os.path.exists(out):
                    r[f"export_{fmt}"]["bytes_per_step"] = round(os.path.getsize(out) / steps, 1)
        if "convert" in only and steps <= 1_000_000:
            jl = f"{a.out}/synth_{tag}.jsonl"
            r["convert_to_jsonl"] = child(cg("convert", pq_path, jl))
            r["jsonl_bytes_per_step"] = os.path.getsize(jl) / steps
            r["report_jsonl"] = child(cg("report", jl))
            r["convert_to_parquet"] = child(cg("convert", jl, f"{a.out}/back.parquet"))
        if "replay" in only:
            r["replay"] = replay_times(pq_path)
            r["replay_arrows"] = replay_times(ipc_path)
        res[tag] = r
        print(steps, json.dumps(r), flush=True)
    with open(f"{a.out}/results.json", "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
