"""`cgwatch check`'s steps in order (see the package docstring): pick the device, load the callable and
its example inputs, lint, then capture and check on CUDA, and build the report dict that report.py
formats and ``--json`` prints.

No torch import at module level: the CLI imports the check package at start-up.
"""

from __future__ import annotations

import contextlib
import sys

from cgwatch import capture_errors as ce
from cgwatch.check.capture import (CAPTURE_ERROR_MODE, add_timings, capture_graph, diagnose,
                                   pool_mib, replay_check, settle, warm_up)
from cgwatch.check.inputs import Inputs, _call_user, clone_args, load_target, make_inputs
from cgwatch.check.lint import LintResult, lint
from cgwatch.errors import CgwatchError


# -- the whole check ----------------------------------------------------------------------------------
def resolve_device(name: str | None):
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CgwatchError(f"--device {name!r}: expected cuda, cuda:N or cpu") from None
    if dev.type not in ("cuda", "cpu"):
        raise CgwatchError(f"--device {name!r}: expected cuda, cuda:N or cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CgwatchError(f"--device {name}: no CUDA device here; --device cpu runs the capture lint only")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CgwatchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if dev.index is not None:
            torch.cuda.set_device(dev.index)
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def check(target: str, spec: str, device: str | None = None, replays: int = 3) -> dict:
    """The report of one check (see the package docstring); ``ok`` says whether it passed."""
    if replays < 1:
        raise CgwatchError(f"--replays must be >= 1, got {replays}")
    dev = resolve_device(device)
    fn = load_target(target)
    with contextlib.redirect_stdout(sys.stderr):     # the callable's prints must not mix into a --json report
        return _check(fn, target, spec, dev, replays)


def _check(fn, target: str, spec: str, dev, replays: int) -> dict:
    import torch

    with torch.inference_mode():                     # as a decode step runs
        inputs = make_inputs(spec, dev)
        res = _new_result(target, inputs, dev)
        lint_result = lint(fn, inputs.values, dev)
        res["findings"] = [f.to_dict() for f in lint_result.findings]
        if lint_result.error is not None:
            failure = _eager_failure(fn, inputs, lint_result)
            if failure is not None:
                return _fail(res, "eager", failure)
            res["notes"].append(f"the lint could not run the callable ({ce.first_line(lint_result.error)}); "
                                "it runs without the lint")
        if dev.type == "cpu":
            return _lint_verdict(res, lint_result)
        return _capture_and_check(res, fn, inputs, lint_result, replays)


def _eager_failure(fn, inputs: Inputs, lint_result: LintResult) -> dict | None:
    """The diagnosis when the callable fails eagerly too (not only under the lint's modes), else None."""
    try:
        _call_user(fn, clone_args(inputs.values))
    except Exception as exc:
        return diagnose(exc, lint_result)
    return None


def _new_result(target: str, inputs: Inputs, dev) -> dict:
    import torch

    cuda = dev.type == "cuda"
    note = None
    if not cuda:
        note = ("no CUDA on this machine" if not torch.cuda.is_available() else "--device cpu") + \
            ": ran the capture lint only; no capture was attempted"
    return {"target": target, "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if cuda else None,
            "torch": torch.__version__, "inputs": inputs.label, "capture_attempted": False,
            "capture_error_mode": CAPTURE_ERROR_MODE if cuda else None, "note": note, "notes": [],
            "ok": False, "status": "FAIL", "phase": None, "cause": None, "hint": None, "error": None,
            "where": None, "op": None, "findings": [], "capture_ms": None, "pool_mib": None,
            "replay_us": None, "eager_us": None, "timed_calls": None, "check": None}


def _fail(res: dict, phase: str, diag: dict) -> dict:
    where = diag["where"]
    res.update(ok=False, status="FAIL", phase=phase, cause=diag["cause"], hint=diag["hint"], error=diag.get("error"),
               where=where.to_dict() if where else None, op=diag.get("op"))
    return res


def _lint_verdict(res: dict, lint_result: LintResult) -> dict:
    """CPU: no capture, so the lint's first error-level finding decides."""
    errors = lint_result.errors
    if not errors:
        res.update(ok=True, status="OK", phase="lint")
        return res
    first = errors[0]
    return _fail(res, "lint", {"cause": first.cause, "hint": first.hint or ce.HINTS[first.cause], "where": first.where,
                               "op": first.what})


def _capture_and_check(res: dict, fn, inputs: Inputs, lint_result: LintResult, replays: int) -> dict:
    try:
        warm_up(fn, inputs.values)
    except Exception as exc:
        settle()
        return _fail(res, "warm-up", diagnose(exc, lint_result))
    res["capture_attempted"] = True
    try:
        graph, static_out, capture_s = capture_graph(fn, inputs.values)
    except Exception as exc:
        settle()
        return _fail(res, "capture", diagnose(exc, lint_result))
    res["capture_ms"] = round(capture_s * 1000, 3)
    res["pool_mib"] = pool_mib(graph)
    try:
        res["check"] = replay_check(graph, fn, inputs, static_out, replays)
    except Exception as exc:
        settle()
        return _fail(res, "check", diagnose(exc, lint_result))
    add_timings(res, graph, fn, inputs)
    if not res["check"]["ok"]:
        return _fail(res, "check", _stale_output(lint_result))
    res.update(ok=True, status="OK", phase=None)
    return res


def _stale_output(lint_result: LintResult) -> dict:
    """The replay check failed: the lint's frozen-value findings are the suspects."""
    suspects = (ce.BAKED_VALUE, ce.HOST_DATA, ce.CPU_TENSOR)
    found = sorted((f for f in lint_result.findings if f.cause in suspects),
                   key=lambda f: (f.severity != "error", suspects.index(f.cause)))
    first = found[0] if found else None
    return {"cause": ce.STALE_OUTPUT, "hint": ce.HINTS[ce.STALE_OUTPUT], "where": first.where if first else None,
            "op": first.what if first else None}
