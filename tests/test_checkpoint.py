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
