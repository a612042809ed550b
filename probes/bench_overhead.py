"""Benchmark: eager vs graph step time, and cgwatch's own per-step overhead against a bare replay
loop of the same graph in the same process (rounds alternate, medians reported).

    python3 probes/bench_overhead.py --models tiny,llama-1b --batches 1,16 --json bench.json

The cgwatch loop is the real one: workload, dispatch, NVTX, CUDA events, step records into a trace
file. The bare loop is ``graph.replay()`` alone (and with the slot-id copy a real engine needs).
Requests last longer than the whole measurement, so no prefill lands inside a timed window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from cgwatch.engine.control import Command
from cgwatch.engine.loop import Engine, EngineConfig
from cgwatch.measure import graph_stats
from cgwatch.sinks import Fanout
from cgwatch.trace import TraceWriter
from cgwatch.workload import WorkloadSpec

HBM_BYTES_PER_S = 3.0e12   # device-to-device copy measured on the H100 (shared/docs/facts.md)


def timed(fn, n: int) -> float:
    """ms per call of fn over n calls, synchronised at both ends."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / n


def host_us_per_replay(graph, n: int) -> float:
    """Median host time of one graph.replay() call while the GPU stays busy (back-pressure included)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        graph.replay()
        times.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def bench(model: str, bs: int, steps: int, rounds: int, eager_steps: int, max_inflight: int,
          trace_ext: str = ".jsonl") -> dict:
    """``trace_ext``: the trace the loop records into (.jsonl, .parquet: the compact format), or none."""
    tmp = tempfile.NamedTemporaryFile(suffix=trace_ext, delete=False).name
    recs: list[dict] = []
    fan = Fanout(recs.append)
    cfg = EngineConfig(model=model, max_seq=1024, capture_sizes=(bs,), sample_interval_s=0.25, max_inflight=max_inflight,
                       workload=WorkloadSpec(arrival=f"fixed:{bs}", prompt_len="fixed:8", output_len="fixed:1015",
                                             max_concurrency=max(bs, 1), max_seq=1024))
    eng = Engine(cfg, fan)
    writer = None
    if trace_ext != "none":
        writer = TraceWriter(tmp, eng.header())
        fan.add(writer.write)
    out = {"model": model, "batch": bs, "max_inflight": max_inflight, "trace": trace_ext}
    with torch.inference_mode():
        eng.start()
        for _ in range(20):
            eng.step()
        eng._emit_done(eng.timer.drain())
        graph = eng.graphs.graphs[bs].graph
        active = list(range(bs))
        st = eng.state

        def cgwatch_steps():
            for _ in range(steps):
                eng.step()
            eng._emit_done(eng.timer.drain())

        def bare_replay():
            graph.replay()

        def bare_with_input():
            st.set_slots(active, bs)
            graph.replay()

        loop, bare, bare_in = [], [], []
        for _ in range(rounds):
            # the bare loops replay the very positions the cgwatch loop just ran (a decode step's attention
            # grows with the position: bare replays 150 positions further on ran ~1.7% slower on an H200),
            # then the state goes back to where the cgwatch loop left it (the workload knows of no bare step)
            before = st.snapshot()
            loop.append(timed(cgwatch_steps, 1) / steps)
            after = st.snapshot()
            st.restore(before)
            bare.append(timed(bare_replay, steps))
            st.restore(before)
            bare_in.append(timed(bare_with_input, steps))
            st.restore(after)
        snap = st.snapshot()
        out["bare_replay_host_us_p50"] = host_us_per_replay(graph, steps)
        st.restore(snap)
        graph_steps = [r for r in recs if r["type"] == "step" and r["bucket"] == bs][20:]
        out |= {"graph_loop_ms": statistics.median(loop), "bare_replay_ms": statistics.median(bare),
                "bare_replay_input_ms": statistics.median(bare_in),
                "graph_gpu_ms_p50": statistics.median(r["gpu_ms"] for r in graph_steps),
                "graph_host_us_p50": statistics.median(r["host_us"] for r in graph_steps)}
        out["overhead_pct"] = 100 * (out["graph_loop_ms"] / out["bare_replay_ms"] - 1)
        out["overhead_vs_input_pct"] = 100 * (out["graph_loop_ms"] / out["bare_replay_input_ms"] - 1)
        cap = next(r for r in recs if r["type"] == "event" and r["kind"] == "capture")
        out["graph_kernels"] = cap["kernels"]
        out["eager_kernels"] = graph_stats.eager_kernels(lambda: st.decode(bs))

        eng._apply(Command("mode", "eager"))
        n0 = len(recs)
        eager_loop = []
        for _ in range(3):
            eager_loop.append(timed(lambda: eng.step(), eager_steps))
        eng._emit_done(eng.timer.drain())
        eager_steps_recs = [r for r in recs[n0:] if r["type"] == "step"]
        out |= {"eager_loop_ms": statistics.median(eager_loop),
                "eager_gpu_ms_p50": statistics.median(r["gpu_ms"] for r in eager_steps_recs),
                "eager_host_us_p50": statistics.median(r["host_us"] for r in eager_steps_recs)}
        out["graph_speedup"] = out["eager_loop_ms"] / out["graph_loop_ms"]
        a = eng.model.args
        weight_bytes = a.n_params() * eng.model.embed_tokens.weight.element_size()
        kv_bytes = bs * a.n_layers * 2 * a.n_kv_heads * 1024 * a.head_dim * 2
        out["hbm_floor_ms"] = (weight_bytes + kv_bytes) / HBM_BYTES_PER_S * 1e3
    summary = eng.close()
    if writer is not None:
        writer.close(summary)
    os.unlink(tmp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,llama-1b")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--eager-steps", type=int, default=40)
    ap.add_argument("--max-inflight", type=int, default=EngineConfig.max_inflight)
    ap.add_argument("--trace-ext", default=".jsonl", help="the recorded trace: .jsonl, .parquet (compact) or none")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_overhead: needs a CUDA GPU")
    rows = []
    for model in a.models.split(","):
        for bs in map(int, a.batches.split(",")):
            rows.append(bench(model, bs, a.steps, a.rounds, a.eager_steps, a.max_inflight, a.trace_ext))
            torch.cuda.empty_cache()
    card = torch.cuda.get_device_name()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"card": card, "torch": torch.__version__, "rows": rows}, f, indent=2)
    print(f"card: {card}, torch {torch.__version__}")
    print("| model | batch | eager ms/step | graph ms/step (cgwatch loop) | speedup | bare replay ms | "
          "cgwatch overhead | overhead vs replay+input | step host µs p50 | bare replay() host µs p50 | "
          "kernels eager/graph | HBM floor ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['eager_loop_ms']:.3f} | {r['graph_loop_ms']:.3f} | "
              f"{r['graph_speedup']:.2f}x | {r['bare_replay_ms']:.3f} | {r['overhead_pct']:+.2f}% | "
              f"{r['overhead_vs_input_pct']:+.2f}% | {r['graph_host_us_p50']:.1f} | {r['bare_replay_host_us_p50']:.1f} | "
              f"{r['eager_kernels']}/{r['graph_kernels']} | {r['hbm_floor_ms']:.3f} |")


if __name__ == "__main__":
    main()
