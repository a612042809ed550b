"""Where a model comes from: a built-in preset with random weights, or a local Hugging Face folder
(config.json + *.safetensors; Llama, Mistral and Qwen2 families)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cgwatch.engine.model import PRESETS, ModelArgs, Transformer, build_random, empty_model
from cgwatch.errors import CgwatchError

SUPPORTED_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def load_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0, rank: int = 0,
               tp_size: int = 1) -> tuple[Transformer, dict]:
    """Returns the model (this rank's shard with tensor parallelism) and a JSON-ready description of
    the whole model for the trace header."""
    model_args(name)
    if name in PRESETS:
        model = build_random(PRESETS[name], device, dtype, seed, rank, tp_size)
        return model, {"name": name, "source": "preset (random weights)", **model.args.describe()}
    path = Path(name)
    model = load_hf(path, device, dtype, rank, tp_size)
    return model, {"name": path.name, "source": str(path.resolve()), **model.args.describe()}


def model_args(name: str) -> ModelArgs:
    """The shapes of a preset or a local checkpoint (its config.json), without loading weights."""
    if name in PRESETS:
        return PRESETS[name]
    path = Path(name)
    if not path.exists():
        raise CgwatchError(f"unknown model {name!r}: use a preset ({', '.join(PRESETS)}) "
                           "or the path of a local Hugging Face checkpoint folder")
    return args_from_hf_config(_read_config(path), str(path / "config.json"))


def _read_config(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CgwatchError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    try:
        return json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CgwatchError(f"{cfg_path}: unreadable ({e})") from None


def args_from_hf_config(cfg: dict, where: str = "config.json") -> ModelArgs:
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in SUPPORTED_ARCHS:
        raise CgwatchError(f"{where}: architecture {arch!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    # transformers < 5 writes rope_theta + rope_scaling; >= 5 writes one rope_parameters dict
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("llama3", "default"):
        raise CgwatchError(f"{where}: rope scaling {kind!r} is not supported (llama3 or none)")
    scaling = rope if kind == "llama3" else None
    try:
        n_heads = cfg["num_attention_heads"]
        return ModelArgs(
            dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads, ffn_dim=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"], norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta), rope_scaling=scaling,
            qkv_bias=arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            explicit_head_dim=cfg.get("head_dim"))
    except KeyError as e:
        raise CgwatchError(f"{where}: missing field {e.args[0]!r}") from None


def load_hf(path: Path, device: torch.device, dtype: torch.dtype, rank: int = 0, tp_size: int = 1) -> Transformer:
    """Load a checkpoint folder; with tensor parallelism, this rank's shard of every weight. The
    checkpoint's q/k/v and gate/up projections go into their parts of the fused layers."""
    from safetensors import safe_open

    from cgwatch.engine.tensor_parallel import HF_PARTS, full_shape, fused_parts, shard

    args = args_from_hf_config(_read_config(path), str(path / "config.json"))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CgwatchError(f"no *.safetensors files in {path} (only safetensors checkpoints are supported)")
    model = empty_model(args, device, dtype, tp_size)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    expected = {n for n in params if fused_parts(n, args) is None}
    for n in params:
        if fused_parts(n, args) is not None:
            expected |= {_hf_name(n, part) for part in HF_PARTS if HF_PARTS[part][0] == n.split(".")[-2]}
    with torch.no_grad():
        for f in files:
            try:
                with safe_open(str(f), framework="pt", device="cpu") as st:
                    for key in st.keys():
                        name = key.removeprefix("model.")
                        target, part = _fused_target(name)
                        p = params.get(target)
                        if p is None:
                            continue   # e.g. rotary inv_freq buffers
                        t = st.get_tensor(key)
                        parts = fused_parts(target, args)
                        if parts is None:
                            want = full_shape(name, p.shape, tp_size)
                            dst, src = p, shard(t, name, rank, tp_size)
                        else:
                            want = (parts[part],) + tuple(p.shape[1:])
                            local = [n // tp_size for n in parts]
                            dst = p.narrow(0, sum(local[:part]), local[part])
                            src = shard(t, target, rank, tp_size)
                        if tuple(t.shape) != want:
                            raise CgwatchError(f"{f.name}: {key} has shape {tuple(t.shape)}, "
                                               f"config.json implies {want}")
                        dst.copy_(src)
                        loaded.add(name)
            except CgwatchError:
                raise
            except Exception as e:
                raise CgwatchError(f"{f}: not a readable safetensors file ({e})") from None
    if args.tie_embeddings:
        loaded.add("lm_head.weight")
    missing = sorted(expected - loaded)
    if missing:
        raise CgwatchError(f"{path}: checkpoint lacks {len(missing)} weights, e.g. {', '.join(missing[:3])}")
    return model.eval().requires_grad_(False)


def _fused_target(name: str) -> tuple[str, int | None]:
    """A checkpoint name -> (the model parameter it fills, its part there): q_proj -> qkv_proj part 0."""
    from cgwatch.engine.tensor_parallel import HF_PARTS
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in HF_PARTS:
        fused, part = HF_PARTS[parts[-2]]
        return ".".join(parts[:-2] + [fused, parts[-1]]), part
    return name, None


def _hf_name(fused_name: str, hf_layer: str) -> str:
    parts = fused_name.split(".")
    return ".".join(parts[:-2] + [hf_layer, parts[-1]])


def hf_config(args: ModelArgs) -> dict:
    """The Hugging Face ``config.json`` (LlamaForCausalLM) of these shapes: what another engine (vLLM)
    needs to build the same model; ``args_from_hf_config`` reads it back to the same ModelArgs."""
    cfg = {"architectures": ["Qwen2ForCausalLM" if args.qkv_bias else "LlamaForCausalLM"],
           "model_type": "qwen2" if args.qkv_bias else "llama",
           "hidden_size": args.dim, "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
           "num_key_value_heads": args.n_kv_heads, "intermediate_size": args.ffn_dim,
           "vocab_size": args.vocab_size, "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
           "rope_scaling": dict(args.rope_scaling) if args.rope_scaling else None,
           "tie_word_embeddings": args.tie_embeddings, "hidden_act": "silu", "attention_bias": args.qkv_bias,
           "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
           "bos_token_id": 1, "eos_token_id": 2}
    if args.explicit_head_dim:
        cfg["head_dim"] = args.explicit_head_dim
    return cfg
