"""The command line with the real vllm installed: the backend starts importing it, and what vLLM
refuses comes back as one line, never a traceback."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")


def cgwatch(*args):
    env = dict(os.environ, VLLM_TARGET_DEVICE=os.environ.get("VLLM_TARGET_DEVICE", "cpu"))
    return subprocess.run([sys.executable, "-m", "cgwatch", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def one_line(out):
    err = out.stderr.strip().splitlines()
    err = [line for line in err if line.startswith("cgwatch: ")]   # vLLM's own log lines go to stderr too
    assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return err[0]


def test_a_missing_model_folder_is_one_line_before_vllm_starts(tmp_path):
    out = cgwatch("run", "--headless", "--backend", "vllm", "--model", str(tmp_path / "no-model"), "--steps", "2")
    assert out.returncode == 2
    assert one_line(out) == f"cgwatch: model folder {tmp_path / 'no-model'} does not exist"


def test_a_model_vllm_cannot_load_is_one_line(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"], "model_type": "nosuch"}')
    out = cgwatch("run", "--headless", "--backend", "vllm", "--model", str(tmp_path / "odd"), "--load-format", "dummy",
                  "--steps", "2")
    assert out.returncode == 1
    assert one_line(out).startswith(f"cgwatch: vLLM could not start '{tmp_path / 'odd'}' (graph mode): ")


def test_a_max_seq_the_model_does_not_have_is_vllms_message_in_one_line(tiny_model):
    out = cgwatch("run", "--headless", "--backend", "vllm", "--model", tiny_model, "--load-format", "dummy", "--max-seq", "100000",
                  "--steps", "2")
    assert out.returncode == 1
    line = one_line(out)
    assert "vLLM could not start" in line and "max_model_len" in line and "validation error" not in line
