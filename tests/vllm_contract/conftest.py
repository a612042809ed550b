"""Contract tests against the real vllm package (no GPU: vLLM's CPU platform lets its config classes
validate; nothing runs a model). The default test env has no vllm: every module here starts with
``pytest.importorskip("vllm")``. .ci/run runs them in a venv with ``pip install -e '.[vllm]'`` (vLLM
0.33) and one with ``'.[vllm026]'`` (vLLM 0.26); expectations that differ between releases branch on
``support.RELEASE`` and say what each release does."""

import json
import os

import pytest

from support import keep_graph_config_on_cpu, use_cpu_platform

# vLLM picks a platform once, at first use: without a GPU only an explicit CPU target gives its config
# classes a device type. Set before vllm is imported (conftest is imported before the test modules).
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

# vLLM 0.26/0.27 ignore VLLM_TARGET_DEVICE=cpu in a CUDA build (support.vllm_honours_cpu_target):
# give them the CPU platform here, before any test module reads vllm.platforms.current_platform.
use_cpu_platform()


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    """vLLM resolves CUDA graph settings on the CPU as on a GPU (support.keep_graph_config_on_cpu)."""
    keep_graph_config_on_cpu(monkeypatch)


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
