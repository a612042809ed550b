"""Capture and replay check of `cgwatch check` (steps 2 and 3, CUDA only), and the diagnosis of a failure.

**Capture.** Warm-up on a side stream (3 calls, as PyTorch's CUDA graph docs do), then
``torch.cuda.graph(g, capture_error_mode="thread_local")``. thread_local, as the engine uses: the
capture fails on every unsafe call this thread makes (the callable runs on it), but not on unrelated
CUDA calls from other threads of the process (a sampler, a logger), which "global" would turn into a
failure blamed on the callable. A failure is classified from the error text, placed at the innermost
user frame of the original exception's traceback, and refined by the lint finding on that line (the
text says "error 900"; the lint knows whether it was an ``.item()`` or a ``nonzero``). An error with no
user frame (capture_end's "unjoined work", 901) takes its line from the lint.

**Replay check.** N replays with fresh random inputs copied into the static input tensors, each
compared with an eager call on the same inputs (allclose, tolerance by dtype), both from the same RNG
seed: a replay takes its random numbers from the generator's state as eager ops do, so a sampler
(``multinomial``, ``exponential_``) draws the same values in both, and only a frozen value differs. A difference is the
"output does not follow the inputs" bug; the lint's frozen-value findings name the suspect line.
Capture time, replay vs eager time per call (CUDA events) and the graph pool size are reported.

No torch import at module level: the CLI imports the check package at start-up.
"""

from __future__ import annotations

import time

from cgwatch import capture_errors as ce
from cgwatch.check.inputs import Inputs, _call_user, clone_args
from cgwatch.check.lint import LintResult, traceback_where

CAPTURE_ERROR_MODE = "thread_local"   # why: see the module docstring
WARMUP_CALLS = 3
TIMED_CALLS = 20
MIB = 2 ** 20
_TOLERANCE = {"float16": (1e-2, 1e-2), "bfloat16": (2e-2, 2e-2), "float32": (1e-4, 1e-5), "float64": (1e-7, 1e-9),
              "complex64": (1e-4, 1e-5), "complex128": (1e-7, 1e-9)}          # (rtol, atol); others exact


# -- capture, replay check, timing (CUDA) --------------------------------------------------------------
def warm_up(fn, values: list) -> None:
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            _call_user(fn, values)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def capture_graph(fn, values: list):
    """(graph, static outputs, capture seconds)."""
    import torch

    graph = torch.cuda.CUDAGraph()
    t0 = time.perf_counter()
    with torch.cuda.graph(graph, capture_error_mode=CAPTURE_ERROR_MODE):
        out = _call_user(fn, values)
    torch.cuda.synchronize()
    return graph, out, time.perf_counter() - t0


def settle() -> None:
    """After a failed capture: let the device finish (a broken context may refuse; the report comes first)."""
    import torch

    try:
        torch.cuda.synchronize()
    except Exception:
        pass


def _outputs(out, name: str = "out") -> list[tuple[str, object]]:
    """(name, leaf) for every leaf of the callable's output: out, out[0], out['logits']..."""
    import torch

    if isinstance(out, torch.Tensor) or not isinstance(out, (tuple, list, dict)):
        return [] if out is None else [(name, out)]
    items = out.items() if isinstance(out, dict) else enumerate(out)
    return [leaf for k, v in items for leaf in _outputs(v, f"{name}[{k!r}]")]


def compare_output(name: str, got, want) -> dict:
    """How far a replay's output is from eager's: max abs/rel error, and ok under the dtype's tolerance."""
    import torch

    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        ok = type(got) is type(want) and got == want
        return {"name": name, "ok": bool(ok), "max_abs": None, "max_rel": None,
                "note": f"a Python value: {got!r} from the graph, {want!r} eager" + ("" if ok else
                        " (a graph returns the value seen at capture)")}
    if got.shape != want.shape or got.dtype != want.dtype:
        return {"name": name, "ok": False, "max_abs": None, "max_rel": None,
                "note": f"{tuple(got.shape)} {got.dtype} from the graph, {tuple(want.shape)} {want.dtype} eager"}
    rtol, atol = _TOLERANCE.get(str(want.dtype).removeprefix("torch."), (0.0, 0.0))
    ok = torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True) if want.is_floating_point() or \
        want.is_complex() else torch.equal(got, want)
    g, w = (t.to(torch.complex128 if t.is_complex() else torch.float64) for t in (got, want))
    diff = torch.nan_to_num((g - w).abs(), nan=0.0, posinf=float("inf"))
    max_abs = float(diff.max()) if diff.numel() else 0.0
    max_rel = float((diff / w.abs().clamp_min(1e-30)).max()) if diff.numel() else 0.0
    return {"name": name, "ok": bool(ok), "max_abs": max_abs, "max_rel": max_rel, "rtol": rtol, "atol": atol}


def replay_check(graph, fn, inputs: Inputs, static_out, replays: int) -> dict:
    """Each replay on fresh inputs (copied into the static ones) against eager on the same inputs."""
    import torch

    worst: dict[str, dict] = {}
    for _ in range(replays):
        fresh = inputs.fresh()
        for static, new in zip(inputs.values, fresh):
            if isinstance(static, torch.Tensor):
                static.copy_(new)
        seed = int(torch.randint(0, 2**62, ()).item())   # the same random numbers for both: a sampler is
        torch.manual_seed(seed)                           # checked, not failed for drawing anew (a replay
        graph.replay()                                    # reads the generator's state as eager does)
        got = [(n, v.clone() if isinstance(v, torch.Tensor) else v) for n, v in _outputs(static_out)]
        torch.manual_seed(seed)
        want = _outputs(_call_user(fn, clone_args(fresh)))
        if [n for n, _ in got] != [n for n, _ in want]:
            worst["structure"] = {"name": "out", "ok": False, "max_abs": None, "max_rel": None,
                                  "note": "eager returns a different output structure than the graph"}
            continue
        for (n, g), (_, w) in zip(got, want):
            r = compare_output(n, g, w)
            if n not in worst or _badness(r) > _badness(worst[n]):
                worst[n] = r
    torch.cuda.synchronize()
    outs = list(worst.values())
    return {"replays": replays, "ok": all(o["ok"] for o in outs), "outputs": outs}


def _badness(r: dict) -> tuple:
    return (not r["ok"], r["max_abs"] or 0.0)


def _time_us(call) -> float:
    """Mean µs per call over TIMED_CALLS, from CUDA events (after 3 untimed calls)."""
    import torch

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TIMED_CALLS):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / TIMED_CALLS


def pool_mib(graph) -> float | None:
    from cgwatch.measure import graph_stats

    size = graph_stats.pool_bytes(graph.pool())
    return None if size is None else round(size / MIB, 3)


def add_timings(res: dict, graph, fn, inputs: Inputs) -> None:
    try:
        res["replay_us"] = round(_time_us(graph.replay), 2)
        res["eager_us"] = round(_time_us(lambda: _call_user(fn, inputs.values)), 2)
        res["timed_calls"] = TIMED_CALLS
    except Exception as exc:   # informative only
        res["notes"].append(f"timing failed: {ce.first_line(exc)}")


# -- diagnosis of a failure ---------------------------------------------------------------------------
def diagnose(exc: BaseException, lint_result: LintResult) -> dict:
    """Cause, line and hint of a failed call/capture: the error text's class, the innermost user frame of
    the original exception, refined by the lint finding on that line (or, with no user frame, the
    first lint finding that fits the text)."""
    cause, _ = ce.classify(exc)
    where = traceback_where(ce.original(exc))
    finding = None
    if where is not None:
        finding = lint_result.at(where)
    elif cause == ce.UNJOINED:
        where = lint_result.side_stream
    elif cause != ce.OOM:
        finding = next((f for f in lint_result.errors if ce.refines(cause, f.cause)), None)
    if finding is not None and ce.refines(cause, finding.cause):
        cause, where = finding.cause, where or finding.where
    else:
        finding = None
    return {"cause": cause, "hint": (finding.hint if finding is not None and finding.hint else ce.HINTS[cause]),
            "where": where, "error": ce.first_line(exc),
            "op": finding.what if finding else None}
