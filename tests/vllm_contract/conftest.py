"""Contract tests against the real vllm package (no GPU: vLLM's CPU platform lets its config classes
validate; nothing runs a model). The default test env has no vllm: every module here starts with
``pytest.importorskip("vllm")``. .ci/run runs them in a venv with ``pip install -e '.[vllm]'``."""

import json
import os

import pytest

# vLLM picks a platform once, at first use: without a GPU only an explicit CPU target gives its config
# classes a device type. Set before vllm is imported (conftest is imported before the test modules).
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _cpu_platform_for_older_vllm() -> None:
    """vLLM before 0.31 ignores VLLM_TARGET_DEVICE=cpu in a CUDA build: without a GPU it finds no
    platform. Give it the CPU platform the same way it resolves one (the module's current platform)."""
    try:
        import torch
        import vllm.platforms as platforms
    except Exception:
        return
    current = getattr(platforms, "_current_platform", None)
    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu" and not torch.cuda.is_available() \
            and (current is None or not getattr(current, "device_type", None)):
        from vllm.platforms.cpu import CpuPlatform
        platforms._current_platform = CpuPlatform()


_cpu_platform_for_older_vllm()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A Llama config.json (no weights, no tokenizer: config validation and the fake executor need none)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}))
    return str(d)
