"""`cgwatch check` on the CPU: the capture lint on broken callables (cause and exact line), the diagnosis of a
failure (on a simulated capture), the example-input grammar, loading MODULE:FUNC, and the CLI end to end.
The real capture is in test_check_gpu.py."""

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import check_cases as C
from cgwatch import capture_errors as ce
from cgwatch import check
from cgwatch.cli import main
from cgwatch.errors import CgwatchError

CPU = torch.device("cpu")
CASES = str(Path(C.__file__).resolve())
REPO = Path(__file__).resolve().parent.parent

BROKEN = ["uses_item", "uses_cpu", "uses_tolist", "prints_tensor", "branches_on_tensor", "uses_float",
          "moves_to_cpu_by_name", "uses_nonzero", "boolean_mask", "uses_unique", "where_one_argument",
          "one_hot_without_classes", "repeats_by_tensor", "mixes_cpu_tensor", "assigns_number_by_index",
          "builds_tensor", "bakes_call_count"]


def run_lint(fn, *inputs):
    with torch.inference_mode():
        return check.lint(fn, list(inputs) or [torch.randn(4, 8)], CPU)


# -- the capture lint --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BROKEN)
def test_lint_names_the_cause_and_the_exact_line(name, capsys):
    cause, line = C.expected(name)
    res = run_lint(getattr(C, name))
    assert res.error is None and res.runs == check.LINT_RUNS
    found = [(f.cause, f.where.file, f.where.line) for f in res.findings]
    assert found == [(cause, CASES, line)], found
    f = res.findings[0]
    assert f.where.function == name and "# expect: " in f.where.source
    assert f.severity == "error"     # every one breaks the capture or its result (torch.tensor inside too)


# -- torch.multinomial: a host read in torch builds before pytorch#134818 -----------------------------------
LINT = importlib.import_module("cgwatch.check.lint")


@pytest.mark.parametrize("reads_host, severity", [(True, "error"), (False, "warning")])
def test_multinomial_of_one_sample_is_a_host_sync(monkeypatch, reads_host, severity):
    """torch.multinomial(probs, 1) checks its probabilities with .item() in torch builds before pytorch#134818
    (a host sync: the capture fails); later builds check with device-side asserts, so there it is a warning
    (capture-safe here, not on an older torch). Either way the hint gives the sync-free form."""
    monkeypatch.setattr(LINT, "multinomial_reads_host", lambda: reads_host)
    cause, line = C.expected("samples_one_token")
    res = run_lint(C.samples_one_token)
    assert [(f.cause, f.where.line, f.severity) for f in res.findings] == [(cause, line, severity)]
    assert cause == ce.HOST_SYNC and res.findings[0].to_dict()["hint"] == LINT.MULTINOMIAL_HINT
    assert "exponential_()).argmax(-1)" in LINT.MULTINOMIAL_HINT
    # with replacement and several samples it takes the kernel path, which never read the host
    assert run_lint(C.samples_with_replacement).findings == []
    # the sync-free form the hint gives is clean, and draws from the same distribution
    assert run_lint(C.samples_without_a_host_read).findings == []


def test_the_multinomial_probe_asks_this_torch(monkeypatch):
    """The probe runs multinomial on a meta tensor (no values): a build that reads .item() there cannot."""
    probe = LINT.multinomial_reads_host.__wrapped__
    assert probe() is False                                      # torch >= the fix, as the tested torch is
    def item_on_the_host(probs, n, *a, **k):
        return probs.sum().item()
    monkeypatch.setattr(torch, "multinomial", item_on_the_host)
    assert probe() is True


def test_the_gumbel_max_form_draws_like_multinomial():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.1, 0.2, 0.7]]).repeat(20000, 1)
    counts = torch.bincount((probs / torch.empty_like(probs).exponential_(generator=g)).argmax(-1), minlength=3)
    assert torch.allclose(counts / 20000.0, probs[0], atol=0.02)


@pytest.mark.parametrize("name", ["rms_scale", "repeats_with_output_size"])
def test_lint_finds_nothing_in_capture_safe_code(name):
    res = run_lint(getattr(C, name))
    assert res.error is None and res.findings == []


def test_lint_on_two_inputs_and_a_dict_output():
    res = run_lint(C.rms_scale_with_ids, torch.randn(4, 8).half(), torch.randint(0, 100, (4,)))
    assert res.error is None and res.findings == []


def _aten_nonzero(x):
    return torch.ops.aten.nonzero.default(x)


def _aten_scalar(x):
    return torch.ops.aten._local_scalar_dense.default(x.sum())


def _aten_mask_index(x):
    return torch.ops.aten.index.Tensor(x, [x > 0])


def _aten_equal(x):
    return torch.ops.aten.equal.default(x, x)


def _aten_unique(x):
    return torch.ops.aten._unique2.default(x)


def _from_numpy(x):
    return x + torch.from_numpy(x.numpy().copy())


@pytest.mark.parametrize("fn, cause", [
    (_aten_nonzero, ce.DATA_DEPENDENT), (_aten_scalar, ce.HOST_SYNC), (_aten_mask_index, ce.DATA_DEPENDENT),
    (_aten_equal, ce.HOST_SYNC), (_aten_unique, ce.DATA_DEPENDENT),
])
def test_op_level_rules_catch_aten_calls_the_api_rules_do_not_see(fn, cause):
    res = run_lint(fn)
    line = inspect.getsourcelines(fn)[1] + 1
    assert [(f.cause, f.where.line) for f in res.findings] == [(cause, line)]
    assert res.findings[0].what.startswith("aten.")


def test_from_numpy_is_host_data_and_numpy_a_host_read():
    res = run_lint(_from_numpy)
    line = inspect.getsourcelines(_from_numpy)[1] + 1
    # one finding per line: the first one seen (x.numpy(), a host read) wins over from_numpy's warning
    assert [(f.cause, f.where.line, f.severity) for f in res.findings] == [(ce.HOST_SYNC, line, "error")]


def test_a_tensor_built_from_changing_values_is_an_error():
    counter = iter(range(100))

    def builds_from_counter(x):
        return x + torch.tensor([float(next(counter))])

    res = run_lint(builds_from_counter)
    line = inspect.getsourcelines(builds_from_counter)[1] + 1
    assert [(f.cause, f.where.line, f.severity) for f in res.findings] == [(ce.BAKED_VALUE, line, "error")]
    assert "on one call and" in res.findings[0].what


def test_a_path_taken_once_is_not_flagged_but_a_changing_path_warns():
    cache, calls = [], [0]

    def builds_a_cache_once(x):
        if not cache:
            cache.append(torch.ones(1, device=x.device) * 3)
        return x * cache[0]

    assert run_lint(builds_a_cache_once).findings == []    # runs 2 and 3 are compared, run 1 may warm up

    def alternates(x):
        calls[0] += 1
        return x * 2 if calls[0] % 2 else (x * 2).relu()

    res = run_lint(alternates)
    assert [(f.cause, f.severity) for f in res.findings] == [(ce.BAKED_VALUE, "warning")]


def test_a_callable_that_raises_is_reported_with_its_line():
    def raises(x):
        return x @ torch.ones(3, 3, device=x.device)

    res = run_lint(raises)
    assert isinstance(res.error, RuntimeError) and res.runs == 0
    d = check.diagnose(res.error, res)
    assert d["where"].line == inspect.getsourcelines(raises)[1] + 1 and d["cause"] == ce.OTHER


def test_lint_does_not_break_or_change_the_callable():
    x = torch.randn(4, 8)
    with torch.inference_mode():
        want = C.rms_scale(x)
        api_mode, op_mode = check._modes()
        st = check._LintState("cpu")
        with api_mode(st), op_mode(st):
            got = C.rms_scale(x)
    assert torch.equal(got, want)


# -- diagnosis of a failed capture, simulated on the CPU ----------------------------------------------
class FakeCapture(TorchFunctionMode):
    """Raises, at the given torch calls, the error a real capture raises there."""

    def __init__(self, fail):
        super().__init__()
        self.fail = fail

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.fail:
            raise self.fail[func]
        return func(*args, **(kwargs or {}))


SYNC_900 = "CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors might be ..."
COPY = "Cannot copy between CPU and CUDA tensors during CUDA graph capture unless the CPU tensor is pinned."


@pytest.fixture
def fake_frames_are_torch(monkeypatch):
    """This file's frames (the fake capture) count as torch's, as a real capture's would."""
    lint_module = importlib.import_module("cgwatch.check.lint")   # check.lint is the lint function
    internal = lint_module._internal
    monkeypatch.setattr(lint_module, "_internal", lambda f: f == __file__ or internal(f))


def fake_capture(fn, fail: dict) -> BaseException:
    """Run ``fn`` as a capture would: the body's error, then capture_end's 901 raised while handling it."""
    x = torch.randn(4, 8)
    try:
        with FakeCapture(fail):
            check._call_user(fn, [x])
    except Exception:
        try:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        except RuntimeError as end:
            return end
    raise AssertionError("the fake capture did not fail")


@pytest.mark.parametrize("name, func, text, cause", [
    ("uses_item", torch.Tensor.item, SYNC_900, ce.HOST_SYNC),
    ("uses_nonzero", torch.Tensor.nonzero, SYNC_900, ce.DATA_DEPENDENT),       # 900 says sync; the lint knows
    ("uses_cpu", torch.Tensor.cpu, COPY, ce.HOST_SYNC),                       # the copy text says "cpu tensor"
    ("mixes_cpu_tensor", torch.Tensor.to, COPY, ce.CPU_TENSOR),
])
def test_failure_takes_the_traceback_line_and_the_lint_cause(fake_frames_are_torch, name, func, text, cause):
    fn = getattr(C, name)
    exc = fake_capture(fn, {func: RuntimeError(text)})
    d = check.diagnose(exc, run_lint(fn))
    assert (d["cause"], d["where"].line) == (cause, C.expected(name)[1])
    assert d["hint"] == ce.HINTS[cause] and d["error"] == "RuntimeError: " + text.splitlines()[0]


def test_failure_with_no_lint_finding_keeps_the_text_cause(fake_frames_are_torch):
    exc = fake_capture(C.rms_scale, {torch.Tensor.float: RuntimeError(SYNC_900)})
    d = check.diagnose(exc, run_lint(C.rms_scale))
    assert d["cause"] == ce.HOST_SYNC and d["where"].line == inspect.getsourcelines(C.rms_scale)[1] + 1
    assert d["op"] is None


def test_out_of_memory_keeps_its_cause_and_line(fake_frames_are_torch):
    exc = fake_capture(C.rms_scale, {torch.rsqrt: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")})
    d = check.diagnose(exc, run_lint(C.rms_scale))
    assert d["cause"] == ce.OOM and d["where"].line == inspect.getsourcelines(C.rms_scale)[1] + 2


def test_errors_without_a_user_frame_take_the_line_from_the_lint():
    lint_result = run_lint(C.uses_nonzero)
    d = check.diagnose(RuntimeError("CUDA error: operation failed due to a previous error during capture"), lint_result)
    assert (d["cause"], d["where"].line) == (ce.DATA_DEPENDENT, C.expected("uses_nonzero")[1])
    side = check.Where(CASES, 7, "f")
    d = check.diagnose(RuntimeError("CUDA error: capturing stream has unjoined work"),
                       check.LintResult([], side_stream=side))
    assert d["cause"] == ce.UNJOINED and d["where"] == side
    d = check.diagnose(RuntimeError("CUDA error: capturing stream has unjoined work"), check.LintResult([]))
    assert d["cause"] == ce.UNJOINED and d["where"] is None


def test_a_failed_replay_check_names_the_frozen_value():
    d = check._stale_output(run_lint(C.bakes_call_count))
    assert d["cause"] == ce.STALE_OUTPUT and d["where"].line == C.expected("bakes_call_count")[1]
    assert "full_like" in d["op"]
    assert check._stale_output(check.LintResult([]))["where"] is None


def test_compare_output_tolerances_and_mismatches():
    a = torch.randn(16)
    assert check.compare_output("out", a.clone(), a)["ok"]
    r = check.compare_output("out", a + 1, a)
    assert not r["ok"] and r["max_abs"] == pytest.approx(1.0, rel=1e-5)
    h = a.half()
    assert check.compare_output("out", h * (1 + 2 ** -10), h)["ok"]            # f16 rounding passes
    i = torch.arange(4)
    assert not check.compare_output("out", i + 1, i)["ok"] and check.compare_output("out", i.clone(), i)["ok"]
    assert not check.compare_output("out", a[:4], a)["ok"]
    assert not check.compare_output("out[1]", 3, 5)["ok"] and check.compare_output("out[1]", 3, 3)["ok"]
    nan = torch.tensor([float("nan"), 1.0])
    assert check.compare_output("out", nan.clone(), nan)["ok"]


def test_outputs_are_named_by_their_path():
    t = torch.zeros(1)
    names = [n for n, _ in check._outputs({"logits": t, "extra": (t, [t, None, 3])})]
    assert names == ["out['logits']", "out['extra'][0]", "out['extra'][1][0]", "out['extra'][1][2]"]
    assert [n for n, _ in check._outputs(t)] == ["out"] and check._outputs(None) == []


# -- example inputs --------------------------------------------------------------------------------------
def test_parse_spec_good():
    specs = check.parse_spec(" f16[16,4096], i64[16]@0:32000, f32[8],bool[2, 3], bf16[], float64[1]@-1.5:2 ")
    assert [(s.dtype, s.shape, s.low, s.high) for s in specs] == [
        ("float16", (16, 4096), None, None), ("int64", (16,), 0, 32000), ("float32", (8,), None, None),
        ("bool", (2, 3), None, None), ("bfloat16", (), None, None), ("float64", (1,), -1.5, 2.0)]
    assert [s.label for s in specs] == ["f16[16,4096]", "i64[16]@0:32000", "f32[8]", "bool[2,3]", "bf16[]",
                                        "f64[1]@-1.5:2"]
    assert check.parse_spec("long[2]")[0].dtype == "int64" and check.parse_spec("HALF[2]")[0].dtype == "float16"


@pytest.mark.parametrize("spec, needle", [
    ("", "empty"), ("   ", "empty"), ("f17[3]", "unknown dtype 'f17'"), ("f32[3", "unclosed"), ("f32]3[", "unbalanced"),
    ("f32[a]", "size 'a'"), ("f32[-1]", "size '-1'"), ("f32", "expected DTYPE[SIZES]"), ("i64[4]@5:5", "empty range"),
    ("i64[4]@1.5:3", "two integers"), ("f32[2]@a:b", "two numbers"), ("bool[2]@0:1", "bool takes no range"),
    ("f32[4] x", "unexpected 'x'"), ("f32[4]@1", "@LOW:HIGH"), ("f32[4],,f32[2]", "empty item"),
    ("u8[3]@0:300", "does not fit uint8"), ("i8[3]@-129:0", "does not fit int8"),
])
def test_parse_spec_bad_is_one_line(spec, needle):
    with pytest.raises(CgwatchError) as e:
        check.parse_spec(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_make_inputs_builds_tensors_on_the_device_within_ranges():
    inp = check.make_inputs("f16[16,64], i64[16]@3:7, f32[5]@2:2.5, bool[9], u8[]", CPU)
    x, ids, f, b, u = inp.values
    assert (x.dtype, x.shape, x.device) == (torch.float16, (16, 64), CPU)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 3 and int(ids.max()) < 7
    assert float(f.min()) >= 2 and float(f.max()) < 2.5 and b.dtype == torch.bool and u.shape == ()
    fresh = inp.fresh()
    assert [(t.dtype, t.shape) for t in fresh] == [(t.dtype, t.shape) for t in inp.values]
    assert not torch.equal(fresh[0], x) and int(fresh[1].min()) >= 3 and int(fresh[1].max()) < 7
    assert inp.label == "f16[16,64], i64[16]@3:7, f32[5]@2:2.5, bool[9], u8[]"


def test_make_inputs_from_a_function():
    inp = check.make_inputs(f"{CASES}:example_inputs", CPU)
    assert [(t.dtype, tuple(t.shape)) for t in inp.values] == [(torch.float16, (4, 8)), (torch.int64, (4,))]
    ids = inp.values[1]
    fresh = inp.fresh()[1]
    assert int(fresh.min()) >= int(ids.min()) and int(fresh.max()) <= int(ids.max())
    assert "example_inputs() = f16[4,8], i64[4]" in inp.label


@pytest.mark.parametrize("spec, needle", [
    ("abc", "expected DTYPE[SIZES]"), (f"{CASES}:uses_item", "raised TypeError"),
    (f"{CASES}:rms_scale_missing", "has no attribute"), (f"{CASES}:expected", "raised TypeError"),
])
def test_make_inputs_bad(spec, needle):
    with pytest.raises(CgwatchError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        check.make_inputs(spec, CPU)


# -- loading MODULE:FUNC ---------------------------------------------------------------------------------
def test_load_target_from_a_path_and_a_dotted_module(tmp_path, monkeypatch):
    assert check.load_target(f"{CASES}:uses_item").__name__ == "uses_item"
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "steps.py").write_text("class Model:\n    @staticmethod\n    def step(x):\n        return x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert check.load_target("mypkg.steps:Model.step")(3) == 3
    assert check.load_target("mypkg/steps.py:Model.step")(4) == 4


@pytest.mark.parametrize("target, needle", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("missing/file.py:f", "no such file: missing/file.py"),
    (f"{CASES}:nope", "has no attribute 'nope'"),
    (f"{CASES}:not_callable", "is not callable (it is a int)"),
    (CASES, "expected MODULE:FUNC"),
    (":f", "expected MODULE:FUNC"),
])
def test_load_target_errors(target, needle):
    with pytest.raises(CgwatchError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check.load_target(target)


def test_a_module_that_fails_to_import_is_one_line(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise ImportError('needs flash_attn\\nsecond line')\n")
    with pytest.raises(CgwatchError) as e:
        check.load_target(f"{bad}:f")
    assert str(e.value) == "importing broken.py failed: ImportError: needs flash_attn"


# -- the CLI, end to end on the CPU ----------------------------------------------------------------------
def cli(capsys, *args):
    rc = main(["check", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_reports_a_host_sync_with_file_line_and_source(capsys):
    rc, out, _ = cli(capsys, "tests/check_cases.py:uses_item", "--example-inputs", "f32[4,8]", "--device", "cpu")
    line = C.expected("uses_item")[1]
    assert rc == 1
    assert "status   FAIL (lint: 1 capture-unsafe operation)" in out and "cause    host sync" in out
    assert f"where    tests/check_cases.py:{line} in uses_item  (Tensor.item())" in out
    assert "scale = x.abs().max().item()" in out and "hint     a value is read on the host" in out
    assert "no capture was attempted" in out


def test_cli_json_and_a_passing_callable(capsys):
    rc, out, _ = cli(capsys, "tests/check_cases.py:rms_scale_with_ids", "--example-inputs", "f16[4,8], i64[4]@0:100",
                     "--device", "cpu", "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"] and res["status"] == "OK" and res["phase"] == "lint"
    assert res["capture_attempted"] is False and "no capture was attempted" in res["note"]
    assert res["inputs"] == "f16[4,8], i64[4]@0:100" and res["findings"] == [] and res["device"] == "cpu"


def test_cli_json_failure_fields(capsys):
    rc, out, _ = cli(capsys, "tests/check_cases.py:boolean_mask", "--example-inputs", "f32[4,8]", "--device", "cpu",
                     "--json")
    res = json.loads(out)
    line = C.expected("boolean_mask")[1]
    assert rc == 1 and res["status"] == "FAIL" and res["phase"] == "lint"
    assert res["cause"] == ce.DATA_DEPENDENT and res["where"]["line"] == line
    assert res["where"]["file"] == "tests/check_cases.py" and res["where"]["function"] == "boolean_mask"
    assert res["findings"][0]["where"]["line"] == line and res["hint"] == ce.HINTS[ce.DATA_DEPENDENT]


def test_cli_keeps_the_callables_prints_out_of_the_json(capsys):
    rc, out, err = cli(capsys, "tests/check_cases.py:prints_tensor", "--example-inputs", "f32[2,2]", "--device", "cpu",
                       "--json")
    assert rc == 1 and json.loads(out)["cause"] == ce.HOST_SYNC and "y = tensor(" in err


def test_cli_lists_warnings_and_passes(capsys, monkeypatch):
    monkeypatch.setattr(LINT, "multinomial_reads_host", lambda: False)   # a torch with the device-side checks
    rc, out, _ = cli(capsys, "tests/check_cases.py:samples_one_token", "--example-inputs", "f32[4,8]", "--device", "cpu")
    assert rc == 0 and "status   OK (lint: no capture-unsafe operation found; 1 warning below)" in out
    listed = [line.split() for line in out.splitlines() if line.startswith("  warning")]
    assert listed and listed[0][:4] == ["warning", "host", "sync",
                                        f"tests/check_cases.py:{C.expected('samples_one_token')[1]}"]


@pytest.mark.parametrize("name, reads_host", [("builds_tensor", False), ("samples_one_token", True)])
def test_cli_fails_a_tensor_built_inside_and_a_host_reading_multinomial(capsys, monkeypatch, name, reads_host):
    """Both were let through before (torch.tensor: a warning; multinomial: nothing): now a FAIL, exit 1, with
    the cause class, the line and a hint."""
    monkeypatch.setattr(LINT, "multinomial_reads_host", lambda: reads_host)
    cause, line = C.expected(name)
    rc, out, _ = cli(capsys, f"tests/check_cases.py:{name}", "--example-inputs", "f32[4,8]", "--device", "cpu", "--json")
    res = json.loads(out)
    assert rc == 1 and res["status"] == "FAIL" and res["phase"] == "lint" and res["cause"] == cause
    assert res["where"]["line"] == line and res["hint"] == (LINT.MULTINOMIAL_HINT if reads_host else ce.HINTS[cause])


def test_cli_inputs_from_a_function(capsys):
    rc, out, _ = cli(capsys, "tests/check_cases.py:rms_scale_with_ids", "--example-inputs",
                     "tests/check_cases.py:example_inputs", "--device", "cpu")
    assert rc == 0 and "example_inputs() = f16[4,8], i64[4]" in out


@pytest.mark.parametrize("args, needle", [
    (["tests/no_such.py:f", "--example-inputs", "f32[4]"], "no such file: tests/no_such.py"),
    (["tests/check_cases.py:nope", "--example-inputs", "f32[4]"], "has no attribute 'nope'"),
    (["tests/check_cases.py:not_callable", "--example-inputs", "f32[4]"], "is not callable"),
    (["tests/check_cases.py:uses_item", "--example-inputs", "f32[4"], "unclosed '['"),
    (["tests/check_cases.py:uses_item", "--example-inputs", "x64[4]"], "unknown dtype 'x64'"),
    (["tests/check_cases.py:uses_item", "--example-inputs", "f32[4]", "--replays", "0"], "--replays must be >= 1"),
    (["tests/check_cases.py:uses_item", "--example-inputs", "f32[4]", "--device", "tpu"], "expected cuda, cuda:N or cpu"),
    (["tests/check_cases.py:uses_item"], "--example-inputs"),
])
def test_cli_usage_errors_are_one_line_exit_2(capsys, args, needle):
    rc, out, err = cli(capsys, *args)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("cgwatch: ") and needle in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_cuda_is_a_usage_error(capsys):
    rc, _, err = cli(capsys, "tests/check_cases.py:uses_item", "--example-inputs", "f32[4]", "--device", "cuda")
    assert rc == 2 and "no CUDA device here; --device cpu runs the capture lint only" in err


def test_probe_script_writes_json_and_prints_the_report(tmp_path):
    out = subprocess.run([sys.executable, "probes/capture_check.py", "tests/check_cases.py:uses_unique",
                          "--example-inputs", "f32[4,8]", "--device", "cpu", "--json", str(tmp_path / "c.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "cause    data-dependent shape" in out.stdout
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["cause"] == ce.DATA_DEPENDENT and res["where"]["line"] == C.expected("uses_unique")[1]
    bad = subprocess.run([sys.executable, "probes/capture_check.py", "tests/check_cases.py:uses_unique",
                          "--example-inputs", "f99[4]"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown dtype" in bad.stderr


def test_the_report_of_a_capture_shows_timings_and_every_output():
    inp = check.make_inputs("f32[4,8]", CPU)
    res = check._new_result("m:f", inp, CPU)
    res.update(gpu="NVIDIA H100 80GB HBM3", device="cuda:0", note=None, capture_attempted=True,
               capture_error_mode="thread_local", capture_ms=5.8, pool_mib=2.0, replay_us=9.1, eager_us=51.4,
               timed_calls=20, ok=True, status="OK")
    t = torch.arange(4.0)
    res["check"] = {"replays": 3, "ok": True, "outputs": [check.compare_output("out[0]", t.clone(), t),
                                                          check.compare_output("out[1]", 7, 7)]}
    text = check.format_report(res)
    assert "  device   NVIDIA H100 80GB HBM3 (cuda:0, torch " in text and "  status   OK" in text
    assert "  capture  5.8 ms (capture_error_mode=thread_local), graph pool 2.0 MiB" in text
    assert "  replay   9.1 µs/call vs eager 51.4 µs/call (CUDA events, mean of 20 calls" in text
    assert "3 replays on fresh inputs vs eager: match" in text
    assert "out[0]: ok, max abs err 0.0e+00" in text and "out[1]: ok, a Python value: 7 from the graph, 7 eager" in text
    res["check"]["outputs"][1] = check.compare_output("out[1]", 7, 9)
    assert "out[1]: DIFFERS, a Python value: 7 from the graph, 9 eager (a graph returns" in check.format_report(res)
