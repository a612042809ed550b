"""The command line with the real vllm installed: the backend starts importing it, and what vLLM
refuses comes back as one line, never a traceback."""

import os
import subprocess

import pytest

pytest.importorskip("vllm")

from support import RELEASE, at_least, cgwatch_command, vllm_honours_cpu_target  # noqa: E402


def cgwatch(*args):
    env = dict(os.environ, VLLM_TARGET_DEVICE=os.environ.get("VLLM_TARGET_DEVICE", "cpu"))
    return subprocess.run(cgwatch_command(*args), capture_output=True, text=True, timeout=300, env=env)


def one_line(out):
    err = out.stderr.strip().splitlines()
    err = [line for line in err if line.startswith("cgwatch: ")]   # vLLM's own log lines go to stderr too
    assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return err[0]


def test_which_releases_need_the_cpu_platform_given():
    """0.26 and 0.27 resolve a platform without looking at VLLM_TARGET_DEVICE: on a CUDA build without
    a GPU a subprocess finds none ("Device string must not be empty"), so cgwatch_command gives it the
    CPU platform the way conftest does in this process. 0.28 on read VLLM_TARGET_DEVICE=cpu
    (vllm/platforms/__init__.py:164 in 0.28) and run as plain `python -m cgwatch`."""
    assert vllm_honours_cpu_target() is at_least(28), RELEASE
    assert ("-m" in cgwatch_command("run")) is at_least(28)


def test_a_missing_model_folder_is_one_line_before_vllm_starts(tmp_path):
    out = cgwatch("run", "--headless", "--backend", "vllm", "--model", str(tmp_path / "no-model"), "--steps", "2")
    assert out.returncode == 2
    assert one_line(out) == f"cgwatch: model folder {tmp_path / 'no-model'} does not exist"


def test_a_config_only_folder_without_load_format_dummy_is_refused_before_vllm_starts(tiny_model):
    out = cgwatch("run", "--headless", "--backend", "vllm", "--model", tiny_model, "--steps", "2")
    assert out.returncode == 2
    assert one_line(out) == (f"cgwatch: model folder {tiny_model} has config.json but no weights (*.safetensors, "
                             f"*.bin): add --load-format dummy for random weights")


def test_a_model_vllm_cannot_load_is_one_line(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"], "model_type": "nosuch"}')
    out = cgwatch("run", "--headless", "--backend", "vllm", "--model", str(tmp_path / "odd"), "--load-format", "dummy",
                  "--steps", "2")
    assert out.returncode == 1
    line = one_line(out)
    assert line.startswith(f"cgwatch: vLLM could not start '{tmp_path / 'odd'}' (graph mode): ")
    assert "Device string must not be empty" not in line    # vLLM got as far as the model, on its CPU platform
    assert "nosuch" in line.lower()


def test_a_max_seq_the_model_does_not_have_is_vllms_message_in_one_line(tiny_model):
    out = cgwatch("run", "--headless", "--backend", "vllm", "--model", tiny_model, "--load-format", "dummy", "--max-seq", "100000",
                  "--steps", "2")
    assert out.returncode == 1
    line = one_line(out)
    assert "vLLM could not start" in line and "max_model_len" in line and "validation error" not in line
