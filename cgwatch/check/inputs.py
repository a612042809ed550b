"""The inputs of `cgwatch check`: the example-input SPEC grammar (SPEC_HELP), the example tensors made from
it (and fresh ones of the same kind for each replay), and the user's callable, loaded from MODULE:FUNC or
path/to/file.py:FUNC and always called through ``_call_user`` (the stack walks of lint.py stop there).

No torch import at module level: the CLI imports the check package at start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cgwatch import capture_errors as ce
from cgwatch.errors import CgwatchError

SPEC_HELP = """\
--example-inputs SPEC, either
  a list of tensors, DTYPE[SIZES][@LOW:HIGH], comma-separated:
      "f16[16,4096], i64[16]@0:32000, f32[8], f32[]"
    DTYPE   f16 bf16 f32 f64 i8 i16 i32 i64 u8 bool (or float16, half, bfloat16, float32, float,
            float64, double, int8, int16, int32, int, int64, long, uint8)
    SIZES   comma-separated sizes; empty for a 0-dim tensor
    @LOW:HIGH  values drawn uniformly from [LOW, HIGH) (ints: default [0, 100); floats: default
            standard normal; not for bool)
  or MODULE:INPUTS_FUNC, a function taking no arguments that returns a tuple of example tensors
  (moved to the device; non-tensor items are passed through unchanged).
Fresh inputs for the replay check are drawn the same way (tensors from INPUTS_FUNC: normal floats,
ints within the example's min..max)."""

_DTYPES = {
    "f16": "float16", "half": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
    "f32": "float32", "float": "float32", "float32": "float32", "f64": "float64", "double": "float64",
    "float64": "float64", "i8": "int8", "int8": "int8", "i16": "int16", "int16": "int16", "i32": "int32",
    "int": "int32", "int32": "int32", "i64": "int64", "long": "int64", "int64": "int64", "u8": "uint8",
    "uint8": "uint8", "bool": "bool",
}
_SHORT = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int8": "i8", "int16": "i16",
          "int32": "i32", "int64": "i64", "uint8": "u8", "bool": "bool"}
_INT_LIMITS = {"int8": (-2 ** 7, 2 ** 7), "uint8": (0, 2 ** 8), "int16": (-2 ** 15, 2 ** 15),
               "int32": (-2 ** 31, 2 ** 31), "int64": (-2 ** 63, 2 ** 63)}   # [min, max + 1)


# -- example inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    dtype: str                     # a torch dtype name: "float16", "int64", "bool"...
    shape: tuple[int, ...]
    low: float | None = None       # @LOW:HIGH, half-open
    high: float | None = None

    @property
    def label(self) -> str:
        rng = "" if self.low is None else f"@{_num(self.low)}:{_num(self.high)}"
        return f"{_SHORT[self.dtype]}[{','.join(map(str, self.shape))}]{rng}"

    def make(self, device):
        import torch

        dt = getattr(torch, self.dtype)
        if self.dtype == "bool":
            return torch.randint(0, 2, self.shape, device=device).bool()
        if dt.is_floating_point:
            if self.low is None:
                return torch.randn(self.shape, dtype=dt, device=device)
            return torch.empty(self.shape, dtype=dt, device=device).uniform_(self.low, self.high)
        low, high = (0, 100) if self.low is None else (int(self.low), int(self.high))
        return torch.randint(low, high, self.shape, dtype=dt, device=device)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    items, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise CgwatchError(f"bad --example-inputs {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise CgwatchError(f"bad --example-inputs {text!r}: unclosed '['")
    return items + ["".join(cur)]


def parse_spec(text: str) -> list[TensorSpec]:
    """``"f16[16,4096], i64[16]@0:32000"`` -> TensorSpecs; CgwatchError (one line) when malformed."""
    if not text.strip():
        raise CgwatchError("--example-inputs is empty (e.g. \"f16[16,4096], i64[16]@0:32000\")")
    return [_parse_item(item.strip(), text) for item in _split_top_level(text)]


def _parse_item(item: str, whole: str) -> TensorSpec:
    def bad(why: str) -> CgwatchError:
        return CgwatchError(f"bad --example-inputs item {item!r} in {whole!r}: {why}")

    if not item:
        raise bad("empty item (two commas in a row?)")
    name, bracket, rest = item.partition("[")
    sizes, close, tail = rest.partition("]")
    if not bracket or not close:
        raise bad("expected DTYPE[SIZES], e.g. f32[4,8]")
    dtype = _DTYPES.get(name.strip().lower())
    if dtype is None:
        raise bad(f"unknown dtype {name.strip()!r} (use f16, bf16, f32, f64, i8, i16, i32, i64, u8, bool)")
    shape = []
    for s in (sizes.split(",") if sizes.strip() else []):
        if not s.strip().isdigit():
            raise bad(f"size {s.strip()!r} is not a non-negative integer")
        shape.append(int(s))
    tail = tail.strip()
    if not tail:
        return TensorSpec(dtype, tuple(shape))
    if not tail.startswith("@") or tail.count(":") != 1:
        raise bad(f"unexpected {tail!r} after the sizes (a range is @LOW:HIGH)")
    low, high = _parse_range(tail[1:], dtype, bad)
    return TensorSpec(dtype, tuple(shape), low, high)


def _parse_range(text: str, dtype: str, bad) -> tuple[float, float]:
    if dtype == "bool":
        raise bad("bool takes no range")
    lo_s, hi_s = (s.strip() for s in text.split(":"))
    try:
        low, high = (int(lo_s), int(hi_s)) if dtype in _INT_LIMITS else (float(lo_s), float(hi_s))
    except ValueError:
        raise bad(f"range {text!r} is not two {'integers' if dtype in _INT_LIMITS else 'numbers'}") from None
    if not low < high:
        raise bad(f"empty range: LOW must be < HIGH (HIGH is excluded), got {low}:{high}")
    if dtype in _INT_LIMITS:
        lo_lim, hi_lim = _INT_LIMITS[dtype]
        if low < lo_lim or high > hi_lim:
            raise bad(f"range {low}:{high} does not fit {dtype}")
    return low, high


@dataclass
class Inputs:
    values: list                       # what the callable is called with (tensors on the device, or passed through)
    specs: list                        # a TensorSpec per value, or None (from INPUTS_FUNC)
    label: str

    def fresh(self) -> list:
        """New random values of the same kind, for a replay."""
        return [spec.make(v.device) if spec is not None else _random_like(v)
                for v, spec in zip(self.values, self.specs)]


def _random_like(v):
    import torch

    if not isinstance(v, torch.Tensor):
        return v
    if v.dtype == torch.bool:
        return torch.randint_like(v, 0, 2, dtype=torch.uint8).bool()
    if v.is_floating_point() or v.is_complex():
        return torch.randn_like(v)
    if v.numel() == 0:
        return v.clone()
    return torch.randint_like(v, int(v.min()), int(v.max()) + 1)


def make_inputs(text: str, device) -> Inputs:
    """Example inputs on ``device`` from a SPEC (see SPEC_HELP)."""
    if "[" in text:
        specs = parse_spec(text)
        return Inputs([s.make(device) for s in specs], list(specs), ", ".join(s.label for s in specs))
    if ":" in text:
        return _inputs_from_function(text.strip(), device)
    raise CgwatchError(f"bad --example-inputs {text!r}: expected DTYPE[SIZES],... (e.g. f32[4,8]) "
                       "or MODULE:INPUTS_FUNC")


def _inputs_from_function(target: str, device) -> Inputs:
    import torch

    fn = load_target(target)
    try:
        out = fn()
    except Exception as e:
        raise CgwatchError(f"{target}() raised {ce.first_line(e)}") from None
    values = list(out) if isinstance(out, (tuple, list)) else [out]
    if not any(isinstance(v, torch.Tensor) for v in values):
        raise CgwatchError(f"{target}() returned {type(out).__name__}, expected a tuple of example tensors")
    values = [v.to(device) if isinstance(v, torch.Tensor) else v for v in values]
    label = ", ".join(f"{_SHORT.get(str(v.dtype).removeprefix('torch.'), v.dtype)}[{','.join(map(str, v.shape))}]"
                      if isinstance(v, torch.Tensor) else type(v).__name__ for v in values)
    return Inputs(values, [None] * len(values), f"{target}() = {label}")


# -- the callable -----------------------------------------------------------------------------------
def load_target(target: str):
    """``MODULE:FUNC`` (a dotted module importable from the cwd, or path/to/file.py; FUNC may be dotted)."""
    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise CgwatchError(f"expected MODULE:FUNC (a dotted module or path/to/file.py), got {target!r}")
    obj = _import(mod_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CgwatchError(f"{mod_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise CgwatchError(f"{target} is not callable (it is a {type(obj).__name__})")
    return obj


def _import(mod_name: str):
    if mod_name.endswith(".py") or "/" in mod_name or os.sep in mod_name:
        return _import_file(Path(mod_name))
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise CgwatchError(f"cannot import module {mod_name!r}: {e}") from None
        raise CgwatchError(f"importing {mod_name} failed: {ce.first_line(e)}") from None
    except Exception as e:
        raise CgwatchError(f"importing {mod_name} failed: {ce.first_line(e)}") from None
    except SystemExit as e:
        raise _exited(mod_name, e) from None


def _import_file(path: Path):
    if not path.is_file():
        raise CgwatchError(f"no such file: {path}")
    path = path.resolve()
    name = "cgwatch_check_" + "".join(c if c.isalnum() else "_" for c in str(path.with_suffix("")))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))          # so the file can import its neighbours
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise CgwatchError(f"importing {path.name} failed: {ce.first_line(e)}") from None
    except SystemExit as e:
        del sys.modules[name]
        raise _exited(path.name, e) from None
    return module


def _exited(what: str, e: SystemExit) -> CgwatchError:
    """A script's sys.exit() at import: one line, not cgwatch exiting silently with the script's code."""
    return CgwatchError(f"importing {what} called sys.exit({e.code!r}): check imports modules, it does not run "
                        "scripts (guard the script's code with if __name__ == '__main__')")


def _call_user(fn, args):
    """Every call of the user's callable goes through here: stack walks stop at this frame."""
    return fn(*args)


def clone_args(values: list) -> list:
    import torch

    return [v.clone() if isinstance(v, torch.Tensor) else v for v in values]
