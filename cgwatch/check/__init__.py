"""`cgwatch check MODULE:FUNC --example-inputs SPEC`: will this callable capture in a CUDA graph, and if
not, why, on which line of the user's code, and how to fix it.

How it works, in the order it runs (the details are in each step's module):

1. **Capture lint** (any device; lint.py). The callable runs eagerly three times on copies of the inputs
   under a ``TorchFunctionMode`` and a ``TorchDispatchMode``. Each capture-unsafe operation is a finding
   with a cause class (capture_errors.py) and the user's line; an op whose Python arguments change between
   two calls is a value the graph would freeze at capture.
2. **Capture** (CUDA only; capture.py). Warm-up on a side stream, then
   ``torch.cuda.graph(g, capture_error_mode="thread_local")``. A failure is classified from the error
   text, placed at the innermost user frame of its traceback, and refined by the lint finding on that line.
3. **Replay check** (capture.py). N replays with fresh random inputs, each compared with an eager call on
   the same inputs; capture time, replay vs eager time per call and the graph pool size are reported.

Without CUDA (or with ``--device cpu``) only step 1 runs: the report lists what would break a capture and
says that no capture was attempted. Exit codes: 0 captures and checks out (CPU: no capture-unsafe op),
1 it fails, 2 bad usage.

The package: inputs.py (the SPEC grammar, example inputs, loading MODULE:FUNC), lint.py (step 1),
capture.py (steps 2 and 3, and ``diagnose`` of a failure), pipeline.py (``check``: the steps in order, and
the report dict), report.py (``format_report``); this file: the ``check`` subcommand, and the names the
rest of cgwatch, the tests and the probes use. No torch import at module level here or in any submodule:
the CLI imports this package at start-up.
"""

from __future__ import annotations

import argparse
import json
import sys

from cgwatch.check.capture import compare_output, diagnose
from cgwatch.check.inputs import SPEC_HELP, Inputs, TensorSpec, load_target, make_inputs, parse_spec
# `lint` below is the function: it shadows the submodule's attribute on this package, so reach the module
# (to monkeypatch its helpers) with importlib.import_module("cgwatch.check.lint"). (That is also why the
# orchestration is pipeline.py, not diagnose.py: that module would shadow the re-exported `diagnose`.)
from cgwatch.check.lint import LINT_RUNS, Finding, LintResult, Where, lint
from cgwatch.check.pipeline import check, resolve_device
from cgwatch.check.report import format_report

# Internal helpers that tests/test_check.py reaches as cgwatch.check._NAME (from before the split into a package).
from cgwatch.check.capture import _outputs
from cgwatch.check.inputs import _call_user
from cgwatch.check.lint import _LintState, _modes
from cgwatch.check.pipeline import _new_result, _stale_output

__all__ = ["LINT_RUNS", "SPEC_HELP", "Finding", "Inputs", "LintResult", "TensorSpec", "Where", "add_arguments",
           "add_parser", "check", "compare_output", "diagnose", "format_report", "lint", "load_target",
           "make_inputs", "parse_spec", "resolve_device", "run"]
_TESTED_INTERNALS = (_call_user, _LintState, _modes, _new_result, _outputs, _stale_output)   # used: see above


# -- CLI ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser, json_help: str, json_path: bool = False) -> None:
    p.add_argument("target", metavar="MODULE:FUNC", help="the callable: a dotted module (importable from the "
                   "current directory) or path/to/file.py, and a function in it")
    p.add_argument("--example-inputs", required=True, metavar="SPEC", help="example inputs (see below)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is one; "
                   "cpu runs the capture lint only)")
    p.add_argument("--replays", type=int, default=3, help="replays checked against eager (default 3)")
    if json_path:
        p.add_argument("--json", metavar="PATH", help=json_help)
    else:
        p.add_argument("--json", action="store_true", help=json_help)


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="capture a callable in a CUDA graph; say why it fails and where",
                       description=__doc__.split("\n\n")[0], epilog=SPEC_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, "the report as JSON")
    p.set_defaults(func=run)


def run(a) -> int:
    res = check(a.target, a.example_inputs, device=a.device, replays=a.replays)
    if a.json:
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
    else:
        sys.stdout.write(format_report(res) + "\n")
    return 0 if res["ok"] else 1
