"""Where a model comes from: a built-in preset with random weights, or a local Hugging Face folder
(config.json + *.safetensors; Llama, Mistral and Qwen2 families)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cgwatch import records as R
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
    if path.is_file():
        raise CgwatchError(f"{path} is a file: give the checkpoint's folder (the one holding config.json)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CgwatchError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CgwatchError(f"{cfg_path}: unreadable ({e})") from None
    if not isinstance(cfg, dict):
        raise CgwatchError(f"{cfg_path}: not a JSON object ({type(cfg).__name__})")
    return cfg


def _positive(where: str, key: str, v, whole: bool = False) -> None:
    """A config field must be a finite number above 0 (an integer >= 1 if ``whole``): records.bad_number's
    rule, one line; a null, a string or 0 would fail later as an internal error."""
    why = R.bad_number(key, v, whole=whole, minimum=1 if whole else 0.0)
    if why is None and v == 0:
        why = f"{key} is 0, not above 0"
    if why:
        raise CgwatchError(f"{where}: {why}")


def _check_supported(cfg: dict, arch: str, where: str) -> None:
    """What the config asks for that cgwatch's model does not compute: refused, never run as something
    else (a Llama with a GELU MLP or a bias on o_proj would otherwise load and give other logits)."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CgwatchError(f"{where}: hidden_act {act!r} is not supported (silu only)")
    if cfg.get("mlp_bias"):
        raise CgwatchError(f"{where}: mlp_bias is not supported (an MLP without biases only)")
    if cfg.get("attention_bias") and arch != "Qwen2ForCausalLM":
        raise CgwatchError(f"{where}: attention_bias is not supported for {arch} (it adds a bias to o_proj too; "
                           "only Qwen2's q/k/v biases are)")
    quant = cfg.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        raise CgwatchError(f"{where}: quantized checkpoints are not supported (quantization_config"
                           + (f": {method})" if method else ")"))


def _check_llama3(rope: dict, where: str) -> None:
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        _positive(f"{where}: llama3 rope scaling", key, rope.get(key))
    if rope["high_freq_factor"] <= rope["low_freq_factor"]:
        raise CgwatchError(f"{where}: llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
                           f"{rope['high_freq_factor']} and {rope['low_freq_factor']}")


def args_from_hf_config(cfg: dict, where: str = "config.json") -> ModelArgs:
    archs = cfg.get("architectures")
    arch = archs if isinstance(archs, str) else archs[0] if isinstance(archs, list) and archs else None
    if arch not in SUPPORTED_ARCHS:
        raise CgwatchError(f"{where}: architecture {arch!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    _check_supported(cfg, arch, where)
    # transformers < 5 writes rope_theta + rope_scaling; >= 5 writes one rope_parameters dict
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise CgwatchError(f"{where}: rope_scaling / rope_parameters must be an object, got {rope!r:.60}")
    rope = dict(rope)
    theta = cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0
    _positive(where, "rope_theta", theta)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("llama3", "default"):
        raise CgwatchError(f"{where}: rope scaling {kind!r} is not supported (llama3 or none)")
    if kind == "llama3":
        _check_llama3(rope, where)
    scaling = rope if kind == "llama3" else None
    fields = {"hidden_size": None, "num_hidden_layers": None, "num_attention_heads": None,
              "intermediate_size": None, "vocab_size": None}
    for name in fields:
        if name not in cfg:
            raise CgwatchError(f"{where}: missing field {name!r}")
        fields[name] = cfg[name]
    fields["num_key_value_heads"] = cfg.get("num_key_value_heads") or fields["num_attention_heads"]
    if cfg.get("head_dim") is not None:
        fields["head_dim"] = cfg["head_dim"]
    for name, v in fields.items():
        _positive(where, name, v, whole=True)
    n_heads, n_kv = fields["num_attention_heads"], fields["num_key_value_heads"]
    if n_heads % n_kv:
        raise CgwatchError(f"{where}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}")
    eps = cfg.get("rms_norm_eps", 1e-5)
    _positive(where, "rms_norm_eps", eps)
    window = _sliding_window(cfg, arch, where)
    return ModelArgs(
        dim=fields["hidden_size"], n_layers=fields["num_hidden_layers"], n_heads=n_heads, n_kv_heads=n_kv,
        ffn_dim=fields["intermediate_size"], vocab_size=fields["vocab_size"], norm_eps=eps,
        rope_theta=float(theta), rope_scaling=scaling, qkv_bias=arch == "Qwen2ForCausalLM",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), explicit_head_dim=cfg.get("head_dim"),
        sliding_window=window)


def _sliding_window(cfg: dict, arch: str, where: str) -> int | None:
    """The attention window the config asks for (Mistral v0.1: 4096; Qwen2 only with use_sliding_window), or
    None. cgwatch's attention is full: the same as the window's while --max-seq fits in it (Engine checks)."""
    window = cfg.get("sliding_window")
    if window is None or (arch == "Qwen2ForCausalLM" and not cfg.get("use_sliding_window")):
        return None
    _positive(where, "sliding_window", window, whole=True)
    return window


def check_window(args: ModelArgs, max_seq: int, model: str) -> None:
    """A sliding window shorter than --max-seq: past it the full attention computed here gives other
    logits than the model's; refused in one line."""
    if args.sliding_window is not None and args.sliding_window < max_seq:
        raise CgwatchError(f"{model}: its sliding_window is {args.sliding_window} positions and cgwatch's attention "
                           f"is full, so --max-seq {max_seq} would compute other logits past it: give --max-seq "
                           f"{args.sliding_window} or less")


def load_hf(path: Path, device: torch.device, dtype: torch.dtype, rank: int = 0, tp_size: int = 1) -> Transformer:
    """Load a checkpoint folder; with tensor parallelism, this rank's shard of every weight. The
    checkpoint's q/k/v and gate/up projections go into their parts of the fused layers."""
    from safetensors import safe_open

    from cgwatch.engine.tensor_parallel import HF_PARTS, full_shape, fused_parts, shard

    args = args_from_hf_config(_read_config(path), str(path / "config.json"))
    files = _weight_files(path)
    model = empty_model(args, device, dtype, tp_size)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    unused: list[str] = []   # tensors in the model's own layout that it has no place for
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
                        if p is None:   # e.g. rotary inv_freq buffers, or another format's names
                            if _ours(key) and not key.endswith("rotary_emb.inv_freq"):
                                unused.append(key)
                            continue
                        if name in loaded:   # two files with the same weight: which one is meant?
                            raise CgwatchError(f"{path}: {key} is in {f.name} and in another file before it; "
                                               f"keep one copy (or add {INDEX})")
                        t = st.get_tensor(key)
                        if not t.dtype.is_floating_point:
                            raise CgwatchError(f"{f.name}: {key} is {str(t.dtype).removeprefix('torch.')}: "
                                               "only float weights are supported (not a quantized checkpoint)")
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
    if unused:   # loading without them would compute another model's logits
        raise CgwatchError(f"{path}: {len(unused)} weights have no place in the model config.json describes, "
                           f"e.g. {', '.join(sorted(unused)[:3])}")
    if args.tie_embeddings:
        loaded.add("lm_head.weight")
    missing = sorted(expected - loaded)
    if missing:
        raise CgwatchError(f"{path}: checkpoint lacks {len(missing)} weights, e.g. {', '.join(missing[:3])}")
    return model.eval().requires_grad_(False)


INDEX = "model.safetensors.index.json"


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files to read: those the shard index names (as transformers reads them; a folder
    may hold others, e.g. Mistral's consolidated.safetensors), else every *.safetensors file."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CgwatchError(f"{index}: unreadable ({type(e).__name__}: {e})") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise CgwatchError(f"{index} names {len(missing)} file(s) that are not in {path}, e.g. {missing[0]} "
                               "(an unfinished download?)")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CgwatchError(f"no *.safetensors files in {path} (only safetensors checkpoints are supported)")
    return files


def _ours(key: str) -> bool:
    """A checkpoint name in the Hugging Face Llama layout cgwatch loads (not another format's)."""
    return key.startswith("model.") or key.startswith("lm_head.")


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
    if args.sliding_window is not None:
        cfg["sliding_window"] = args.sliding_window
    return cfg
