"""The capture lint of `cgwatch check` (step 1, any device): what in a callable would break or distort a
CUDA graph capture, and on which line of the user's code.

The callable runs eagerly three times on copies of the inputs under a ``TorchFunctionMode`` (the
user-facing calls: ``Tensor.item``, ``.tolist()``, ``print(tensor)``, ``x[mask]``, ``torch.arange(n)``
without ``device=``...) and a ``TorchDispatchMode`` (aten ops, including those made inside libraries:
``nonzero``, ``_unique2``, device-to-host copies, ops mixing CPU and CUDA tensors). Each capture-unsafe
operation is a finding with a cause class (capture_errors.py), the first user frame of the Python stack
(torch, the stdlib and this package skipped) and its source text. The second and third runs are compared
op by op: an op whose Python arguments change between calls (a counter, a global) is a value the graph
would freeze at capture. Two rules read PyTorch's source rather than an op's name: a tensor built from
host data inside the callable (``torch.tensor``) is an error, since its host-to-GPU copy waits for the GPU
and fails the capture; ``torch.multinomial`` without replacement or of one sample is a host sync where the
installed torch checks the probabilities with ``.item()`` (before pytorch#134818; ``multinomial_reads_host``
asks the build), else a warning. Both confirmed with real captures on an H200 (README, `cgwatch check`).

The frame helpers here (``_user_where``, ``traceback_where``) also place a failed capture's error on the
user's line (capture.py's ``diagnose``). No torch import at module level: the lint modes are built on
first use (``_modes``), as the CLI imports the check package at start-up.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import sysconfig
import weakref
from dataclasses import dataclass

from cgwatch import capture_errors as ce
from cgwatch.check.inputs import _call_user, clone_args

LINT_RUNS = 3                         # run 1 may build caches; runs 2 and 3 are compared
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# -- where in the user's code -------------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    file: str
    line: int
    function: str

    @property
    def source(self) -> str:
        return linecache.getline(self.file, self.line).strip()

    def to_dict(self) -> dict:
        return {"file": _display_path(self.file), "line": self.line, "function": self.function, "source": self.source}


def _display_path(path: str) -> str:
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return path if rel.startswith("..") else rel


@functools.lru_cache(maxsize=4096)
def _internal(filename: str) -> bool:
    """torch's own code, the stdlib, and this package (cgwatch/check/): never the line to blame."""
    import torch

    if filename.startswith("<"):
        return True
    path = os.path.abspath(filename)
    if path.startswith(_PACKAGE_DIR) or path.startswith(os.path.dirname(os.path.abspath(torch.__file__)) + os.sep):
        return True
    stdlib = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep
    return path.startswith(stdlib) and "site-packages" not in path and "dist-packages" not in path


def _where(frame) -> Where:
    return Where(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


def _user_where(frame) -> Where | None:
    """The innermost user frame at or above ``frame``; None when the op came from torch itself, called
    straight by the check (e.g. FUNC is a torch function)."""
    while frame is not None and frame.f_code is not _call_user.__code__:
        if not _internal(frame.f_code.co_filename):
            return _where(frame)
        frame = frame.f_back
    return None


def traceback_where(exc: BaseException) -> Where | None:
    """The innermost user frame in an exception's traceback (below the check's call of the callable)."""
    found, inside = None, False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code is _call_user.__code__:
            inside = True
        elif inside and not _internal(code.co_filename):
            found = Where(code.co_filename, tb.tb_lineno, code.co_name)
        tb = tb.tb_next
    return found


# -- capture lint -----------------------------------------------------------------------------------
@dataclass
class Finding:
    cause: str
    what: str
    where: Where | None
    severity: str = "error"            # "error": breaks the capture or its result; "warning": may
    hint: str | None = None            # what to do, where the cause class's hint says too little

    def to_dict(self) -> dict:
        return {"cause": self.cause, "severity": self.severity, "what": self.what,
                "where": self.where.to_dict() if self.where else None, "hint": self.hint or ce.HINTS[self.cause]}


@dataclass
class LintResult:
    findings: list[Finding]
    error: BaseException | None = None   # the callable raised while linted
    side_stream: Where | None = None     # first op the callable ran on another stream (CUDA)
    runs: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def at(self, where: Where) -> Finding | None:
        return next((f for f in self.findings if f.where and (f.where.file, f.where.line) == (where.file, where.line)),
                    None)


class _LintState:
    """What the two modes share while the callable runs."""

    def __init__(self, target: str):
        self.target = target                  # "cuda" or "cpu": the device the inputs live on
        self.findings: list[Finding] = []
        self.trace: list = []                 # (op, args signature, where) of this run
        self.api = None                       # the user-facing call the function mode is inside
        self.busy = 0                         # >0 while the dispatch mode does its own bookkeeping
        self._host_made: dict[int, weakref.ref] = {}   # tensors made from host data (torch.tensor, x[i] = 1.0)
        self.base_stream = None
        self.side_stream: Where | None = None
        self.multinomial_reads_host = multinomial_reads_host()   # probed once, outside the lint modes

    def on_target(self, t) -> bool:
        import torch

        return isinstance(t, torch.Tensor) and t.device.type == self.target

    def mark_host_made(self, t) -> None:
        self._host_made[id(t)] = weakref.ref(t)

    def host_made(self, t) -> bool:
        ref = self._host_made.get(id(t))       # by identity: a tensor's == is elementwise
        return ref is not None and ref() is t

    def add(self, finding: Finding) -> None:
        """One finding per line: the first, unless a later one on that line is an error and it is not, or
        the later one knows more (host data whose values change between calls: a value baked in)."""
        key = (finding.where.file, finding.where.line) if finding.where else (None, finding.what)
        for i, f in enumerate(self.findings):
            if ((f.where.file, f.where.line) if f.where else (None, f.what)) == key:
                if (f.severity == "warning" and finding.severity == "error") or \
                        (f.cause == ce.HOST_DATA and finding.cause == ce.BAKED_VALUE and finding.severity == "error"):
                    self.findings[i] = finding
                return
        self.findings.append(finding)


@functools.lru_cache(maxsize=1)
def _api_rules() -> dict:
    """User-facing torch calls the function mode flags: func -> (kind, label)."""
    import torch
    import torch.nn.functional as F

    T = torch.Tensor
    rules = {}

    def put(kind, owner, names, prefix):
        for n in names:
            f = getattr(owner, n, None)
            if f is not None:
                rules[f] = (kind, f"{prefix}{n}()")

    put("host_read", T, ("item", "tolist", "numpy", "cpu", "equal", "allclose"), "Tensor.")
    for n, label in (("__bool__", "bool(tensor) (`if tensor:`, `and`, `or`)"), ("__float__", "float(tensor)"),
                     ("__int__", "int(tensor)"), ("__index__", "a tensor used as a Python index"),
                     ("__complex__", "complex(tensor)"), ("__array__", "numpy.asarray(tensor)"),
                     ("__repr__", "print/repr of a tensor"), ("__format__", "formatting a tensor (f-string)")):
        rules[getattr(T, n)] = ("host_read", label)
    put("host_read", torch, ("equal", "allclose"), "torch.")
    put("to", T, ("to",), "Tensor.")
    put("data_dep", torch, ("nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount"),
        "torch.")
    put("data_dep", T, ("nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount"), "Tensor.")
    put("where", torch, ("where",), "torch.")
    put("repeat_interleave", torch, ("repeat_interleave",), "torch.")
    put("repeat_interleave", T, ("repeat_interleave",), "Tensor.")
    rules[F.one_hot] = ("one_hot", "F.one_hot")
    put("index", T, ("__getitem__", "__setitem__"), "Tensor.")
    put("factory", torch, ("ones", "zeros", "empty", "full", "arange", "range", "rand", "randn", "randint",
                           "randperm", "linspace", "logspace", "eye", "empty_strided"), "torch.")
    put("host_data", torch, ("tensor", "as_tensor", "asarray", "from_numpy", "frombuffer"), "torch.")
    return rules


def _api_finding(st: _LintState, func, args, kwargs):
    """(cause, what, severity[, hint]) for a user-facing call that breaks or distorts a capture, else None."""
    import torch

    kind, label = _api_rules().get(func, (None, None))
    if kind is None:
        return None
    first = args[0] if args else None
    tensors_on_target = any(st.on_target(a) for a in args)
    if kind == "host_read" and tensors_on_target:
        return ce.HOST_SYNC, label, "error"
    if kind == "to" and st.on_target(first) and _targets_cpu_by_name(args[1:], kwargs):
        return ce.HOST_SYNC, "Tensor.to('cpu')", "error"
    if kind == "data_dep" and tensors_on_target:
        return ce.DATA_DEPENDENT, label, "error"
    if kind == "where" and len(args) == 1 and not kwargs and tensors_on_target:
        return ce.DATA_DEPENDENT, "torch.where(condition) with one argument (= nonzero)", "error"
    if kind == "repeat_interleave" and kwargs.get("output_size") is None and \
            any(isinstance(a, torch.Tensor) for a in list(args[1:2]) + [kwargs.get("repeats")]) and tensors_on_target:
        return ce.DATA_DEPENDENT, f"{label} with tensor repeats and no output_size", "error"
    if kind == "one_hot" and (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) == -1 and tensors_on_target:
        return ce.DATA_DEPENDENT, "F.one_hot() without num_classes", "error"
    if kind == "index" and st.on_target(first) and len(args) > 1 and _has_mask(args[1]):
        return ce.DATA_DEPENDENT, "indexing with a boolean mask", "error"
    if kind == "factory" and "device" not in kwargs and torch.get_default_device().type == "cpu":
        return ce.CPU_TENSOR, f"{label} without device= makes a CPU tensor", "error"
    if kind == "host_data" and not isinstance(first, torch.Tensor):   # as_tensor(a_tensor) is no host data
        return ce.HOST_DATA, f"{label} inside the callable: a tensor from host data on every call", "error"
    return None


def _targets_cpu_by_name(args, kwargs) -> bool:
    """Does a .to(...) call name the CPU as a string ("cpu", "cpu:0")? (A torch.device object is left to
    the dispatch mode: on the CPU lint it is usually ``x.device``, which is not a move to the host.)"""
    return any(isinstance(a, str) and a.split(":")[0] == "cpu" for a in list(args) + [kwargs.get("device")])


def _has_mask(index) -> bool:
    import torch

    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) and i.dim() > 0 for i in items)


def _op_finding(st: _LintState, func, args, kwargs):
    """(cause, what, severity[, hint]) for an aten op that breaks or distorts a capture, else None."""
    import torch

    if getattr(func, "namespace", None) != "aten":
        return None
    name, overload = _op_name(func), func._overloadname
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    label = f"aten.{name}"
    if name in ce.HOST_SYNC_OPS and st.on_target(first):
        return ce.HOST_SYNC, f"{label} (a tensor value read on the host)", "error"
    if name in ce.DATA_DEPENDENT_OPS and st.on_target(first):
        return ce.DATA_DEPENDENT, f"{label} (output shape depends on the values)", "error"
    if name == "where" and len(args) == 1 and st.on_target(first):
        return ce.DATA_DEPENDENT, f"{label}(condition) (= nonzero)", "error"
    if name == "repeat_interleave" and overload in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None \
            and st.on_target(first):
        return ce.DATA_DEPENDENT, f"{label} with tensor repeats and no output_size", "error"
    if name == "one_hot" and (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) == -1 and st.on_target(first):
        return ce.DATA_DEPENDENT, f"{label} without num_classes", "error"
    if name in ce.INDEX_OPS and len(args) > 1 and st.on_target(first):
        if _has_mask(args[1]):
            return ce.DATA_DEPENDENT, f"{label} with a boolean mask", "error"
        values = args[2] if len(args) > 2 else None
        if isinstance(values, torch.Tensor) and (st.host_made(values) or values.device.type != first.device.type):
            return ce.CPU_TENSOR, f"{label}: a Python number or CPU tensor assigned by indexing is copied to the GPU", "error"
        return None
    if name == "lift_fresh" and st.api is None:
        return ce.HOST_DATA, "a tensor built from host data (torch.tensor/from_numpy)", "error"
    if name == "multinomial" and st.on_target(first) and _multinomial_fast_path(args, kwargs):
        if st.multinomial_reads_host:
            return (ce.HOST_SYNC, "torch.multinomial without replacement or of one sample checks the probabilities "
                    "with .item() on the host in this torch build", "error", MULTINOMIAL_HINT)
        return (ce.HOST_SYNC, "torch.multinomial without replacement or of one sample: its probability checks are "
                "device-side asserts in this torch build (no host read), .item() on the host in builds before "
                "pytorch#134818", "warning", MULTINOMIAL_HINT)
    if st.target == "cuda":
        return _device_mix(name, args, kwargs)
    return None


MULTINOMIAL_HINT = ("sample without a host read: (probs / torch.empty_like(probs).exponential_()).argmax(-1) draws "
                    "one sample per row from the same distribution (the Gumbel-max form torch.multinomial's own fast "
                    "path uses); or run a torch whose multinomial checks on the device (pytorch#134818). Either way "
                    "a replay draws new samples, so compare replays with eager by distribution, not value by value")


def _multinomial_fast_path(args, kwargs) -> bool:
    """torch.multinomial(input, num_samples, replacement=False): the path that checked on the host (.item())
    before pytorch#134818 is taken without replacement, or for a single sample."""
    n = args[1] if len(args) > 1 else kwargs.get("num_samples")
    replacement = args[2] if len(args) > 2 else kwargs.get("replacement", False)
    return not replacement or n == 1


@functools.lru_cache(maxsize=1)
def multinomial_reads_host() -> bool:
    """Does this torch build's multinomial read its probabilities on the host (``.item()``) on the path that
    draws without replacement or one sample? pytorch#134818 (2024) turned those checks into
    ``_assert_async``, a device-side assert on CUDA (no host read: capture-safe). Probed on a meta tensor,
    which has no values: a build that calls ``.item()`` there cannot run it (nor can a build without a
    meta kernel for it, which then counts as reading the host)."""
    import torch

    try:
        torch.multinomial(torch.ones(2, 4, device="meta"), 1)
    except Exception:
        return True
    return False


def _op_name(func) -> str | None:
    """"nonzero" for aten.nonzero.default; None for what is not an op overload."""
    return getattr(getattr(func, "overloadpacket", None), "__name__", None)


def _device_mix(name, args, kwargs):
    """On CUDA: copies between host and GPU, and ops mixing CPU and GPU tensors."""
    import torch

    if name in ce.COPY_OPS:
        src, dst = _copy_ends(name, args, kwargs)
        if src is None or dst is None:
            return None
        if src == "cuda" and dst == "cpu":
            return ce.HOST_SYNC, f"aten.{name}: a copy to the host (.cpu(), .to('cpu'), .tolist(), .numpy())", "error"
        if src == "cpu" and dst == "cuda" and not (kwargs.get("non_blocking") and args[0].is_pinned()):
            return ce.CPU_TENSOR, f"aten.{name}: a CPU tensor copied to the GPU (.to(device), .cuda())", "error"
        return None
    tensors = [a for a in _flat(args) + _flat(list(kwargs.values())) if isinstance(a, torch.Tensor)]
    if any(t.device.type == "cuda" for t in tensors) and any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
        return ce.CPU_TENSOR, f"aten.{name} mixes a CPU tensor with GPU tensors", "error"
    return None


def _copy_ends(name, args, kwargs):
    """(source device type, destination device type) of a copy op."""
    import torch

    if name == "copy_":
        return _dev(args[1] if len(args) > 1 else None), _dev(args[0])
    if name in ("_copy_from", "_copy_from_and_resize"):
        return _dev(args[0]), _dev(args[1] if len(args) > 1 else None)
    dst = kwargs.get("device")
    for a in args[1:]:
        if dst is None and isinstance(a, (torch.device, torch.Tensor)):
            dst = a
    return _dev(args[0]), (_dev(dst) if dst is not None else _dev(args[0]))


def _dev(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.device.type
    if isinstance(x, (torch.device, str)):
        return torch.device(x).type
    return None


def _flat(xs) -> list:
    out = []
    for x in xs:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) else [x])
    return out


def _signature(func, args, kwargs) -> tuple:
    """The Python-side arguments of an op (tensors as placeholders; values of small host-data tensors)."""
    import torch

    if _op_name(func) == "lift_fresh" and args and args[0].numel() <= 64:
        return ("values", tuple(args[0].detach().flatten().tolist()))
    out: list = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append("<tensor>")
        elif isinstance(x, (list, tuple)):
            out.append("(")
            for y in x:
                walk(y)
            out.append(")")
        elif isinstance(x, (float, complex)):
            out.append(repr(x))
        elif x is None or isinstance(x, (bool, int, str)):
            out.append(x)
        elif isinstance(x, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
            out.append(str(x))
        else:
            out.append(type(x).__name__)

    walk(list(args))
    for k in sorted(kwargs):
        out.append(k + "=")
        walk(kwargs[k])
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _modes():
    """The two lint modes (classes built on first use: torch is imported lazily)."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class ApiLint(TorchFunctionMode):
        def __init__(self, st: _LintState):
            super().__init__()
            self.st = st

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            st = self.st
            if st.busy:                       # the dispatch mode's own bookkeeping
                return func(*args, **kwargs)
            try:
                hit = _api_finding(st, func, args, kwargs)
                if hit:
                    st.add(Finding(*hit[:2], _user_where(sys._getframe()), *hit[2:]))
            except Exception:                 # the lint never breaks the user's call
                pass
            prev, st.api = st.api, func
            try:
                return func(*args, **kwargs)
            finally:
                st.api = prev

    class OpLint(TorchDispatchMode):
        def __init__(self, st: _LintState):
            super().__init__()
            self.st = st

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            st = self.st
            st.busy += 1
            try:
                self._observe(func, args, kwargs)
            except Exception:
                pass
            finally:
                st.busy -= 1
            out = func(*args, **kwargs)
            if _op_name(func) == "lift_fresh" and isinstance(out, torch.Tensor):
                st.mark_host_made(out)
            return out

        def _observe(self, func, args, kwargs):
            st = self.st
            where = _user_where(sys._getframe())
            st.trace.append((str(func), _signature(func, args, kwargs), where))
            hit = _op_finding(st, func, args, kwargs)
            if hit:
                st.add(Finding(*hit[:2], where, *hit[2:]))
            if st.base_stream is not None and st.side_stream is None and \
                    torch.cuda.current_stream() != st.base_stream:
                st.side_stream = where

    return ApiLint, OpLint


def lint(fn, values: list, device) -> LintResult:
    """Run the callable eagerly LINT_RUNS times under the lint modes (see the module docstring)."""
    import torch

    st = _LintState(device.type)
    api_mode, op_mode = _modes()
    traces, error = [], None
    for _ in range(LINT_RUNS):
        args = clone_args(values)
        st.trace = []
        st.base_stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        try:
            with api_mode(st), op_mode(st):
                _call_user(fn, args)
        except Exception as exc:
            error = exc
            break
        traces.append(st.trace)
    if len(traces) == LINT_RUNS:
        diff = _trace_diff(traces[-2], traces[-1])
        if diff:
            st.add(diff)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LintResult(st.findings, error, st.side_stream, len(traces))


def _trace_diff(a: list, b: list) -> Finding | None:
    """Two calls on the same inputs should run the same ops with the same Python arguments; the first
    difference is a value (or a path) that capture would freeze."""
    for (op_a, sig_a, where_a), (op_b, sig_b, where_b) in zip(a, b):
        if op_a != op_b:
            return Finding(ce.BAKED_VALUE, f"two calls on the same inputs run different ops here ({op_a}, then "
                                           f"{op_b}): Python-side state picks the path, capture keeps one",
                           where_b, "warning")
        if sig_a != sig_b:
            va, vb = next(((x, y) for x, y in zip(sig_a, sig_b) if x != y), (sig_a, sig_b))
            return Finding(ce.BAKED_VALUE, f"{op_a} gets {_show(va)} on one call and {_show(vb)} on the next",
                           where_a, "error")
    if len(a) != len(b):
        longer = a if len(a) > len(b) else b
        return Finding(ce.BAKED_VALUE, "two calls on the same inputs run a different number of ops: Python-side "
                                       "state picks the path, capture keeps one", longer[min(len(a), len(b))][2],
                       "warning")
    return None


def _show(v) -> str:
    return v if isinstance(v, str) else repr(v)
