"""``cgwatch bench``: how much CUDA graphs buy on this model and GPU, per batch size.

The measuring is in engine/bench.py; this module is the command: flags, the trace, and the tables.
"""

from __future__ import annotations

import argparse
import json
import sys

from cgwatch.errors import CgwatchError

NA = "n/a"
MODES = ("eager", "graph", "eager_fused", "graph_fused", "compile")   # *_fused: engine/kernels.py


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="eager vs CUDA graph (vs torch.compile) step latency and throughput per batch size")
    p.add_argument("--backend", choices=("pytorch", "vllm"), default="pytorch",
                   help="pytorch: cgwatch's own engine (default); vllm: a real vLLM engine, same table")
    p.add_argument("--model", default="tiny", help="preset (tiny, llama-1b, llama-8b) or a local HF checkpoint folder "
                   "(with --backend vllm also an HF id; a preset runs with vLLM's --load-format dummy)")
    p.add_argument("--load-format", default=None, help="--backend vllm: vLLM's --load-format (dummy = random weights)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="--backend vllm: vLLM's (default 0.9)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="comma-separated (default %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per batch size and mode (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    p.add_argument("--tokens", type=int, default=128, help="decode length of the throughput run (default 128)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per request (default 32)")
    p.add_argument("--max-seq", type=int, default=1024, help="KV cache positions per request (default 1024)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--tensor-parallel-size", "--tp", type=int, default=1, metavar="N",
                   help="split the model over N ranks, one GPU each (pytorch backend; adds the all-reduce share "
                        "and cgwatch's plan cost per step)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", default="plain,fused",
                   help="the engine's kernels to measure: plain (PyTorch ops), fused (Triton; CUDA only, skipped "
                        "with a note elsewhere) or both (default %(default)s; pytorch backend)")
    p.add_argument("--with-compile", action="store_true",
                   help='also torch.compile(mode="reduce-overhead") as a third column (CUDA only)')
    p.add_argument("--record", metavar="PATH", help="also write the bench's trace here (for report, replay and "
                   "recommend --costs); without it nothing is written")
    p.add_argument("--overwrite", action="store_true", help="with --record: replace a trace already at PATH")
    p.add_argument("--no-record", action="store_true", help=argparse.SUPPRESS)   # the default now; kept for scripts
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.add_argument("--no-nvtx", action="store_true")
    p.set_defaults(func=run)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CgwatchError(f"bad --batch-sizes {text!r}: expected integers like 1,2,4,8") from None
    if not sizes or min(sizes) < 1:
        raise CgwatchError(f"bad --batch-sizes {text!r}: sizes must be >= 1")
    return sizes


def _make_bench(a, cfg, fan):
    """cgwatch's own engine, or vLLM (backends/vllm_bench.py): the same result rows either way."""
    from cgwatch.engine.bench import Bench
    if a.backend == "pytorch":
        for flag, given in (("--load-format", a.load_format), ("--gpu-memory-utilization", a.gpu_memory_utilization)):
            if given is not None:
                raise CgwatchError(f"{flag} applies to --backend vllm only")
        return Bench(cfg, fan)
    if a.tensor_parallel_size > 1:
        raise CgwatchError("--tensor-parallel-size is for --backend pytorch in the bench")
    if a.kernels != "plain,fused":
        raise CgwatchError("--kernels is for --backend pytorch (vLLM picks its own kernels)")
    if a.with_compile:
        raise CgwatchError("--with-compile is for --backend pytorch (vLLM compiles its model itself)")
    if a.device != "auto":
        raise CgwatchError("--device is not available with --backend vllm (use CUDA_VISIBLE_DEVICES)")
    from cgwatch.backends.vllm_bench import VllmBench
    from cgwatch.backends.vllm_version import require_vllm
    require_vllm()
    opts = {"load_format": a.load_format}
    if a.gpu_memory_utilization is not None:
        opts["gpu_memory_utilization"] = a.gpu_memory_utilization
    return VllmBench(cfg, fan, opts)


def run(a) -> int:
    from cgwatch.engine.bench import BenchConfig, check_config
    from cgwatch.session import Session, stopped_error

    cfg = BenchConfig(model=a.model, batch_sizes=_sizes(a.batch_sizes), steps=a.steps, warmup=a.warmup,
                      tokens=a.tokens, prompt_len=a.prompt_len, max_seq=a.max_seq, device=a.device,
                      dtype=a.dtype, seed=a.seed, with_compile=a.with_compile, nvtx=not a.no_nvtx,
                      tensor_parallel_size=a.tensor_parallel_size,
                      kernels=tuple(k.strip() for k in a.kernels.split(",") if k.strip()))
    check_config(cfg)
    if a.no_record and a.record:
        raise CgwatchError("--record and --no-record together: choose one")
    from cgwatch.trace import check_record_path
    check_record_path(a.record, a.overwrite)
    path = a.record   # opt-in: a bench writes nothing it was not asked for
    session = Session.open(lambda emit: _make_bench(a, cfg, emit), record=path, what="bench",
                           end_fields={"bench": None})
    bench = session.engine
    say = (lambda s: print(f"cgwatch bench: {s}", file=sys.stderr, flush=True))
    try:
        with session:
            result = session.run(lambda: bench.run(progress=say))
            session.end_fields["bench"] = result   # the trace's end record carries the tables
    except CgwatchError:
        raise
    except Exception as e:   # a crash mid-sweep: the trace keeps what was measured, and says why it stopped
        raise stopped_error("bench", e, path) from e
    result["trace"] = path
    if a.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_result(result) + "\n")
    return 0


# -- tables ----------------------------------------------------------------------------------------
def _f(v, spec: str) -> str:
    return NA if v is None else format(v, spec)


def _cell(m: dict | None, key: str, spec: str) -> str:
    if not m or "error" in m:
        return NA
    return _f(m.get(key), spec)


def _speedup(row: dict, mode: str) -> str:
    """Against plain eager (the seed's baseline); without it, against eager of the same kernels."""
    e, m = row.get("eager") or row.get("eager_fused"), row.get(mode)
    if not e or not m or "p50_ms" not in m or "p50_ms" not in e:
        return NA
    return f"{e['p50_ms'] / m['p50_ms']:.2f}x"


def format_result(res: dict) -> str:
    rows = res["rows"]
    modes = [m for m in MODES if any(r.get(m) is not None for r in rows) or (m != "compile" and m in rows[0])]
    bw = res.get("bandwidth_bytes_per_s")
    model = res["model"].get("name") if isinstance(res["model"], dict) else res["model"]
    vllm = res.get("backend") == "vllm"
    engine = (f"vLLM {res.get('vllm')} (model runner {res.get('model_runner')}, {res.get('cudagraph_mode')}, "
              f"capture of all sizes {_f(res.get('capture_total_s'), '.2f')} s)" if vllm else "cgwatch engine")
    timing = (res.get("latency") if vllm else
              'CUDA events around each step' if bw else
              'host time (CPU: ops are synchronous, so launch µs is the whole step too)')
    tp = res.get("tensor_parallel_size") or 1
    engine += f" · {tp} ranks (tensor parallel)" if tp > 1 else ""
    lines = [f"cgwatch bench · {engine} · {model} · {res['gpu']} · {res['dtype']} · max_seq {res['max_seq']} · "
             f"prompt {res['prompt_len']} · {res['steps']} timed steps after {res['warmup']} warm-up · "
             f"throughput over {res['tokens']} tokens",
             f"step time = {timing}; "
             f"HBM floor = (weights + KV read at the mean context) / {_f(bw and bw / 1e12, '.2f')} TB/s measured copy"]
    head = ["batch"]
    for m in modes:
        head += [f"{m} ms mean/p50/p99"]
    base = "eager" if "eager" in modes else "eager_fused"
    head += [f"{m} speedup" for m in modes if m != base]
    head += [f"{m} launch µs" for m in modes] + ["kernels " + "/".join(modes)]
    table = []
    for r in rows:
        cells = [str(r["batch"])]
        for m in modes:
            x = r.get(m)
            cells.append(NA if not x or "error" in x else
                         f"{x['mean_ms']:.3f}/{x['p50_ms']:.3f}/{x['p99_ms']:.3f}")
        cells += [_speedup(r, m) for m in modes if m != base]
        cells += [_cell(r.get(m), "host_us_p50", ".0f") for m in modes]
        cells.append("/".join(_cell(r.get(m), "kernels", "d") for m in modes))
        table.append(cells)
    lines += ["", _table(head, table)]
    gap_modes = [m for m in modes if m != "compile"]   # torch.compile runs outside the engine's loop
    graphs = [m for m in ("graph", "graph_fused") if m in modes]
    extra = ("wall_p50_ms", "step wall ms", ".3f") if vllm else ("gap_us_p50", "gap µs", ".1f")
    head2 = (["batch"] + [f"{m} tok/s" for m in modes] + [f"{m} {extra[1]}" for m in gap_modes]
             + ["HBM floor ms"] + [f"{m} / floor" for m in graphs or ["graph"]])
    head2 += [f"{m} capture s" for m in graphs]
    own = [m for m in graphs if any((r.get(m) or {}).get("overhead_pct") is not None for r in rows)]
    head2 += [f"{m} cgwatch %" for m in own]
    if "compile" in modes:
        head2 += ["compile first call s", "cudagraph skips"]
    if tp > 1:
        head2 += [f"{m} {x}" for x in ("all-reduce %", "plan µs", "skew ms") for m in gap_modes]
    table2 = []
    for r in rows:
        cells = ([str(r["batch"])] + [_cell(r.get(m), "tokens_per_s", ",.0f") for m in modes]
                 + [_cell(r.get(m), extra[0], extra[2]) for m in gap_modes])
        floor = r.get("floor_ms")
        cells.append(_f(floor, ".3f"))
        for m in graphs or ["graph"]:
            g = r.get(m)
            cells.append(NA if not floor or not g or "p50_ms" not in g else f"{g['p50_ms'] / floor:.1f}x")
        cells += [_cell(r.get(m), "capture_s", ".2f") for m in graphs]
        cells += [_cell(r.get(m), "overhead_pct", "+.2f") for m in own]
        if "compile" in modes:
            c = r.get("compile") or {}
            cells += [_f(c.get("compile_s"), ".2f"), _f(c.get("cudagraph_skips"), "d")]
        if tp > 1:
            cells += [_cell(r.get(m), key, spec) for key, spec in (("allreduce_pct", ".1f"), ("plan_us_p50", ".0f"),
                                                                   ("skew_ms_p50", ".3f")) for m in gap_modes]
        table2.append(cells)
    lines += ["", _table(head2, table2)]
    if own:
        lines.append("cgwatch %: cgwatch's own cost per graph step, its loop against the same graph replayed alone "
                     "from the same state (medians of 5 rounds of the throughput's tokens)")
    if tp > 1:
        lines.append("all-reduce %: NCCL kernels' share of the step's kernel time (profiler, rank 0; CPU: gloo "
                     "all-reduce share of host time); plan µs: rank 0's host time per step to send the plan and "
                     "take the other ranks' times (cgwatch's cost of N ranks); skew: slowest - fastest rank")
    if "compile" in modes:
        lines.append("compile first call = dynamo + inductor + cudagraph record at that size; at the second size "
                     "dynamo recompiles with a dynamic batch dimension (automatic dynamic shapes), and later sizes "
                     "only record a graph")
    if any(m.endswith("_fused") for m in modes):
        lines.append("*_fused: the fused Triton kernels (add+RMSNorm, RoPE+KV write, attention over each row's live "
                     "positions, SiLU*up); eager / graph: plain PyTorch ops, attention over whole cache rows")
    elif res.get("kernels_why"):
        lines.append(f"fused kernels not measured: {res['kernels_why']}")
    errors = {f"{m} (batch {r['batch']})": r[m]["error"] for r in rows for m in modes
              if isinstance(r.get(m), dict) and "error" in r[m]}
    lines += [f"{k}: {v}" for k, v in errors.items()]
    if res.get("trace"):
        lines.append(f"trace: {res['trace']} (cgwatch report / replay / recommend --costs)")
    elif "trace" in res:
        lines.append("no trace written (--record PATH keeps one for cgwatch report / replay / recommend --costs)")
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)
