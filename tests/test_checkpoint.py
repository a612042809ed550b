"""Local Hugging Face checkpoints: our engine must compute what transformers computes."""

import json

import pytest
import torch

from cgwatch.engine.load import load_model
from cgwatch.errors import CgwatchError

transformers = pytest.importorskip("transformers")

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=101, max_position_embeddings=256, rms_norm_eps=1e-6)

CASES = {
    "llama3-tied": ("LlamaConfig", "LlamaForCausalLM",
                    dict(rope_theta=500000.0, tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(rope_theta=10000.0, sliding_window=None)),
    "qwen2-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000000.0, tie_word_embeddings=False)),
}


def save_hf(tmp_path, case):
    cfg_cls, model_cls, extra = CASES[case]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
    hf = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():   # HF zero-inits biases; make them matter
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf


@pytest.mark.parametrize("kernels", ["plain", "fused"])
@pytest.mark.parametrize("case", list(CASES))
@torch.inference_mode()
def test_prefill_and_decode_match_transformers(tmp_path, case, kernels, request):
    if kernels == "fused":
        request.getfixturevalue("triton_interpret")   # the Triton kernels, interpreted on the CPU
    hf = save_hf(tmp_path, case)
    model, info = load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    model.kernels = kernels
    assert info["name"] == tmp_path.name
    model.setup_caches(2, 128)
    ids = torch.randint(COMMON["vocab_size"], (1, 90))     # past the llama3 scaling's original window
    ref = hf(ids).logits[0].float()
    torch.testing.assert_close(model.prefill(ids[0, :80], 1), ref[79], rtol=1e-4, atol=1e-4)
    # decode the next 10 positions one token at a time through the KV cache
    from cgwatch.engine.step import DecodeState
    st = DecodeState(model, max_batch=2)
    st.pos[1] = 80
    for k in range(80, 90):
        st.next_token[1] = ids[0, k]
        st.set_slots([1], 2)                               # padded with the scratch row
        logits = st.decode(2)[0][0]
        torch.testing.assert_close(logits, ref[k], rtol=1e-4, atol=1e-4)


def test_unsupported_architecture_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CgwatchError, match="GPT2LMHeadModel.*not supported"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)


def test_missing_pieces_are_clear_errors(tmp_path):
    with pytest.raises(CgwatchError, match="unknown model"):
        load_model(str(tmp_path / "nope"), torch.device("cpu"), torch.float32)
    with pytest.raises(CgwatchError, match="no config.json"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    save_hf(tmp_path, "mistral")
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    with pytest.raises(CgwatchError, match="not a readable safetensors"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CgwatchError, match="no \\*.safetensors"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)


# ---- checkpoints cgwatch cannot compute: a one-line error, never a crash or other logits ----

def _config(**edits):
    cfg = {"architectures": ["LlamaForCausalLM"], **COMMON, "hidden_act": "silu", "tie_word_embeddings": True}
    cfg.update(edits)
    return {k: v for k, v in cfg.items() if v != "DROP"}


@pytest.mark.parametrize("edits, match", [
    (dict(hidden_size=None), "hidden_size is null, not a number"),
    (dict(hidden_size="64"), "hidden_size is '64', not a number"),
    (dict(num_attention_heads=0), "num_attention_heads is 0, below 1"),
    (dict(num_key_value_heads=3), "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "llama3 rope scaling: low_freq_factor is null, not a number"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                        "original_max_position_embeddings": 64}), "high_freq_factor > low_freq_factor"),
    (dict(rope_scaling=[1, 2]), "rope_scaling / rope_parameters must be an object"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (dict(mlp_bias=True), "mlp_bias is not supported"),
    (dict(attention_bias=True), "attention_bias is not supported for LlamaForCausalLM"),
    (dict(quantization_config={"quant_method": "fp8"}), r"quantized checkpoints are not supported \(quantization_config: fp8\)"),
])
def test_configs_it_cannot_compute_are_one_line_errors(tmp_path, edits, match):
    """Each of these was an internal error (a TypeError / KeyError deep in the model) or, worse, loaded
    and computed another model's logits (GELU as SiLU, biases dropped, fp8 weights without their scales)."""
    (tmp_path / "config.json").write_text(json.dumps(_config(**edits)))
    with pytest.raises(CgwatchError, match=match):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)


def test_a_config_that_is_not_an_object_or_a_file_given_as_the_folder(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CgwatchError, match="not a JSON object"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    with pytest.raises(CgwatchError, match="is a file: give the checkpoint's folder"):
        load_model(str(tmp_path / "config.json"), torch.device("cpu"), torch.float32)


def _reshard(path, n_files=2):
    """The checkpoint's weights split over n_files shards with a transformers-style index."""
    from safetensors.torch import load_file, save_file
    weights = {}
    for f in sorted(path.glob("*.safetensors")):
        weights.update(load_file(f))
        f.unlink()
    keys, weight_map = sorted(weights), {}
    for i in range(n_files):
        name = f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
        part = keys[i::n_files]
        save_file({k: weights[k] for k in part}, path / name)
        weight_map.update(dict.fromkeys(part, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weights


@torch.inference_mode()
def test_shards_follow_the_index(tmp_path):
    from safetensors.torch import save_file
    save_hf(tmp_path, "mistral")
    weights = _reshard(tmp_path)
    ref, _ = load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    # a file the index does not name (Mistral's repos ship consolidated.safetensors) is not read
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, tmp_path / "consolidated.safetensors")
    model, _ = load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    torch.testing.assert_close(model.state_dict(), ref.state_dict())
    # without the index the two copies are ambiguous: an error, not the last file read
    (tmp_path / "model.safetensors.index.json").rename(tmp_path / "index.bak")
    with pytest.raises(CgwatchError, match="is in .* and in another file"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    # a shard the index names that is not there: named (was "checkpoint lacks N weights")
    (tmp_path / "index.bak").rename(tmp_path / "model.safetensors.index.json")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CgwatchError, match="names 1 file.*model-00002-of-00002.safetensors.*unfinished download"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)


def test_weights_without_a_place_or_not_float_are_refused(tmp_path):
    """A tensor the model has no place for (here a third layer in a two-layer config, as an o_proj bias
    or an MLP bias would be) was skipped without a word; an int8 weight was cast to float."""
    from safetensors.torch import load_file, save_file
    save_hf(tmp_path, "mistral")
    f = next(tmp_path.glob("*.safetensors"))
    weights = load_file(f)
    extra = dict(weights, **{"model.layers.2.mlp.down_proj.weight": weights["model.layers.1.mlp.down_proj.weight"].clone()})
    save_file(extra, f)
    with pytest.raises(CgwatchError, match="1 weights have no place.*model.layers.2.mlp.down_proj.weight"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    save_file(dict(weights, **{"model.norm.weight": weights["model.norm.weight"].to(torch.int8)}), f)
    with pytest.raises(CgwatchError, match="model.norm.weight is int8: only float weights"):
        load_model(str(tmp_path), torch.device("cpu"), torch.float32)


def test_a_sliding_window_shorter_than_max_seq_is_refused(tmp_path, capsys):
    """Mistral v0.1 attends to its last 4096 positions; cgwatch's attention is full, the same only while
    --max-seq fits in the window. Past it the logits would differ without a word: refused before the load."""
    from cgwatch.cli import main
    from cgwatch.engine.load import args_from_hf_config, check_window
    mistral = _config(architectures=["MistralForCausalLM"], sliding_window=64)
    args = args_from_hf_config(mistral)
    assert args.sliding_window == 64
    check_window(args, 64, "m")   # within the window: the same attention
    with pytest.raises(CgwatchError, match="sliding_window is 64 .* give --max-seq 64 or less"):
        check_window(args, 65, "m")
    # Qwen2 names a window but uses it only with use_sliding_window
    assert args_from_hf_config(_config(architectures=["Qwen2ForCausalLM"], sliding_window=64)).sliding_window is None
    assert args_from_hf_config(_config(architectures=["Qwen2ForCausalLM"], sliding_window=64,
                                       use_sliding_window=True)).sliding_window == 64
    with pytest.raises(CgwatchError, match="sliding_window is '4k', not a number"):
        args_from_hf_config(_config(architectures=["MistralForCausalLM"], sliding_window="4k"))
    (tmp_path / "config.json").write_text(json.dumps(mistral))   # no weights: refused before they are read
    assert main(["run", "--headless", "--model", str(tmp_path), "--max-seq", "128", "--steps", "1",
                 "--max-concurrency", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --max-seq 64 or less" in err[0], err
