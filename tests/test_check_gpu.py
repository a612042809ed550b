"""`cgwatch check` with a real CUDA graph capture (`pytest -m gpu`; skipped without CUDA).

Every case runs in its own process (`python -m cgwatch check ... --json`): a failed capture can leave the
CUDA context unusable, and one broken capture must not poison the next. The expected cause and line come
from the ``# expect:`` markers in tests/check_cases.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import check_cases as C
from cgwatch import capture_errors as ce

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
REPO = Path(__file__).resolve().parent.parent


def check(name: str, spec: str = "f32[4,8]", *extra: str, as_json: bool = True):
    """(exit code, report) of `cgwatch check tests/check_cases.py:NAME` on the GPU, in a fresh process."""
    cmd = [sys.executable, "-m", "cgwatch", "check", f"tests/check_cases.py:{name}", "--example-inputs", spec,
           "--device", "cuda", *extra] + (["--json"] if as_json else [])
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), (out.returncode, out.stderr[-3000:])
    return out.returncode, (json.loads(out.stdout) if as_json else out.stdout)


@pytest.mark.parametrize("name", [
    "uses_item", "uses_cpu", "uses_tolist", "prints_tensor", "branches_on_tensor",     # host sync
    "uses_nonzero", "boolean_mask", "uses_unique",                                     # data-dependent shape
    "mixes_cpu_tensor",                                                                # cpu tensor
    "allocates_too_much_in_capture",                                                   # out of memory
    "forks_without_join",                                                              # unjoined side-stream work
    "builds_tensor",                                                                   # tensor from host data
])
def test_capture_failure_names_the_cause_and_line(name):
    cause, line = C.expected(name)
    rc, res = check(name)
    assert rc == 1 and res["status"] == "FAIL", res
    assert res["phase"] == "capture" and res["capture_attempted"], res
    assert res["capture_error_mode"] == "thread_local"
    assert res["cause"] == cause, res
    assert res["where"]["file"] == "tests/check_cases.py" and res["where"]["line"] == line, res
    assert res["where"]["function"] == name and "# expect" in res["where"]["source"]
    assert res["error"] and res["hint"] == ce.HINTS[cause]


@pytest.mark.parametrize("name, spec", [
    ("rms_scale", "f32[4,8]"),
    ("rms_scale_with_ids", "f16[4,8], i64[4]@0:100"),
    ("rms_scale_with_ids", "tests/check_cases.py:example_inputs"),
])
def test_a_correct_callable_captures_and_replays_like_eager(name, spec):
    rc, res = check(name, spec, "--replays", "4")
    assert rc == 0 and res["ok"] and res["status"] == "OK" and res["phase"] is None, res
    assert res["device"].startswith("cuda") and res["gpu"] and res["capture_attempted"]
    assert res["capture_ms"] > 0 and res["replay_us"] > 0 and res["eager_us"] > 0 and res["timed_calls"] > 0
    assert res["pool_mib"] is not None and res["pool_mib"] >= 0
    chk = res["check"]
    assert chk["ok"] and chk["replays"] == 4, chk
    names = [o["name"] for o in chk["outputs"]]
    assert names == (["out"] if name == "rms_scale" else ["out['scores']", "out['ids']"])
    for o in chk["outputs"]:
        assert o["ok"] and o["max_abs"] <= o["atol"] + o["rtol"] * 10, o
    assert res["findings"] == []


def test_the_human_report_shows_capture_replay_and_check():
    rc, out = check("rms_scale", as_json=False)
    assert rc == 0, out
    assert "  status   OK" in out and "capture_error_mode=thread_local" in out and "graph pool" in out
    assert "µs/call vs eager" in out and "3 replays on fresh inputs vs eager: match" in out


@pytest.mark.parametrize("name", ["samples_one_token", "samples_with_replacement", "samples_without_a_host_read"])
def test_a_sampler_captures_and_its_replays_draw_like_eager_from_the_same_seed(name):
    """Seen on an H200 (torch 2.11.0+cu130, docs/data/h200_check_*.json): multinomial captures (no host read
    on this torch; the lint's warning stays, for older builds), and before the replay check seeded both sides
    alike, all three samplers FAILed as "output does not follow inputs"."""
    rc, res = check(name, "f32[4,8]", "--replays", "4")
    assert rc == 0 and res["status"] == "OK" and res["check"]["ok"], res
    from cgwatch.check.lint import multinomial_reads_host
    host = [f for f in res["findings"] if f["cause"] == ce.HOST_SYNC]
    assert (len(host) == 1) == (name == "samples_one_token")
    assert all(f["severity"] == ("error" if multinomial_reads_host() else "warning") for f in host)


def test_a_value_frozen_at_capture_fails_the_replay_check():
    rc, res = check("bakes_call_count")
    cause, line = C.expected("bakes_call_count")
    assert rc == 1 and res["phase"] == "check" and res["capture_attempted"], res
    assert res["cause"] == ce.STALE_OUTPUT and res["hint"] == ce.HINTS[ce.STALE_OUTPUT]
    out = res["check"]["outputs"]
    assert not res["check"]["ok"] and [o["name"] for o in out] == ["out"]
    assert not out[0]["ok"] and out[0]["max_abs"] >= 1.0, out        # x + n: n moved on by at least 1
    assert res["where"]["line"] == line and cause == ce.BAKED_VALUE   # the lint names the suspect line
    assert res["replay_us"] > 0 and res["capture_ms"] > 0             # timings still reported
