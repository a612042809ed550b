"""Where a model's weights are split across tensor-parallel ranks (Megatron-style).

Column-parallel (the output features split, rank r keeps the r-th contiguous block of rows): the fused
qkv and gate/up projections, part by part: rank r's qkv_proj is its block of q's rows, then of k's,
then of v's (whole heads: Hugging Face lays heads out contiguously), and its gate_up_proj its block
of gate's rows, then of up's. Row-parallel (the input
features split, rank r keeps the r-th block of columns): o_proj and down_proj, whose partial outputs
the model all-reduces (model.all_reduce). Everything else (embedding, norms, lm_head) is replicated:
every rank holds it whole and computes the full logits, so no gather is needed before sampling.
"""

from __future__ import annotations

import torch

from cgwatch.engine.model import ModelArgs
from cgwatch.errors import CgwatchError

COLUMN = ("qkv_proj", "gate_up_proj")
ROW = ("o_proj", "down_proj")
# a Hugging Face checkpoint's separate projections: (the fused layer they go to, their part in it)
HF_PARTS = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
            "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


def fused_parts(name: str, args: ModelArgs) -> list[int] | None:
    """The whole model's row counts of the parts of fused parameter ``name`` (None: not fused)."""
    layer = name.split(".")[-2] if "." in name else ""
    if layer == "qkv_proj":
        return [args.n_heads * args.head_dim] + [args.n_kv_heads * args.head_dim] * 2
    if layer == "gate_up_proj":
        return [args.ffn_dim] * 2
    return None


def shard_dim(name: str) -> int | None:
    """The dimension of parameter ``name`` split across ranks; None when it is replicated."""
    parts = name.split(".")
    if len(parts) < 2:
        return None
    layer = parts[-2]
    if layer in COLUMN:
        return 0                                   # weight [out, in] and bias [out]: split out
    if layer in ROW and parts[-1] == "weight":
        return 1                                   # weight [out, in]: split in
    return None


def full_shape(name: str, local: torch.Size, tp_size: int) -> tuple[int, ...]:
    """The whole parameter's shape, from this rank's shard."""
    shape = list(local)
    d = shard_dim(name)
    if d is not None:
        shape[d] *= tp_size
    return tuple(shape)


def shard(whole: torch.Tensor, name: str, rank: int, tp_size: int, parts: list[int] | None = None) -> torch.Tensor:
    """Rank ``rank``'s block of the whole parameter ``name`` (the whole tensor if replicated). A fused
    parameter (``parts``: its parts' whole row counts, fused_parts) gets its block of each part."""
    d = shard_dim(name)
    if d is None or tp_size == 1:
        return whole
    if parts is not None:
        return torch.cat([_block(p, d, rank, tp_size) for p in whole.split(parts, dim=0)], dim=0)
    return _block(whole, d, rank, tp_size)


def _block(t: torch.Tensor, d: int, rank: int, tp_size: int) -> torch.Tensor:
    n = t.shape[d] // tp_size
    return t.narrow(d, rank * n, n)


def check_shapes(args: ModelArgs, tp_size: int, name: str = "the model") -> None:
    """Heads, KV heads and the MLP width must split evenly; a one-line error says which does not."""
    if tp_size < 1:
        raise CgwatchError(f"--tensor-parallel-size must be >= 1, got {tp_size}")
    for what, n in (("attention heads", args.n_heads), ("KV heads", args.n_kv_heads),
                    ("MLP width (intermediate_size)", args.ffn_dim)):
        if n % tp_size:
            raise CgwatchError(f"--tensor-parallel-size {tp_size}: {name} has {n} {what}, "
                               f"not divisible by {tp_size}")
