"""A Llama-architecture decoder (RMSNorm, RoPE, GQA, SwiGLU) with a static, slot-indexed KV cache.

Shapes follow Hugging Face's Llama so real checkpoints load without permutation (checkpoint.py).
The q, k and v projections are one fused Linear (``qkv_proj``, rows q then k then v) and so are gate
and up (``gate_up_proj``), as in vLLM: one GEMM each instead of three and two (load.py splits a
checkpoint's separate weights into them).
With tensor parallelism (``tp_size`` > 1, engine/tensor_parallel.py) each rank holds its share of the
heads and of the MLP, Megatron-style: column-parallel qkv and gate/up, row-parallel o_proj and
down_proj, each followed by one all-reduce over ``group``. Embedding, norms and lm_head stay whole on
every rank (replicated), so every rank computes the same logits. ``tp_size`` 1 runs no collective.
The KV cache has one row per request slot plus a scratch row (index ``max_slots``): padding rows of a
graph point at the scratch row, so they never touch a live request's KV.

A decode step runs one of two kernel sets (``Transformer.kernels``): "plain", unfused PyTorch ops
(attention through SDPA over each row's whole cache row), or "fused", the Triton kernels of
engine/kernels.py (residual add + RMSNorm, RoPE + KV write, attention over the live positions only,
SiLU * up), with the same weights and GEMMs. Prefill is always plain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cgwatch.engine import kernels as K


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)  # HF "llama3" scaling, or None
    qkv_bias: bool = False          # Qwen2
    tie_embeddings: bool = False    # Llama-3.2-1B ties lm_head to the embedding
    explicit_head_dim: int | None = None  # configs whose head_dim != dim // n_heads
    sliding_window: int | None = None    # Mistral v0.1's window; the attention here is full (Engine checks --max-seq)

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.dim // self.n_heads

    def n_params(self) -> int:
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        per_layer = self.dim * (2 * q + 2 * kv) + 3 * self.dim * self.ffn_dim + 2 * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layers * per_layer + self.dim + head

    def describe(self) -> dict:
        return asdict(self) | {"head_dim": self.head_dim, "params": self.n_params()}


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# Built-in shapes, random weights, no download.
PRESETS: dict[str, ModelArgs] = {
    "tiny": ModelArgs(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, ffn_dim=1536, vocab_size=32000),
    "llama-1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, vocab_size=128256,
                          rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, tie_embeddings=True),
    "llama-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=128256,
                          rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE),
    # Llama-3-70B shapes (141 GB of bf16 weights: N=2 on two 141 GB H200s, 70.6 GB a rank)
    "llama-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672, vocab_size=128256,
                           rope_theta=500000.0),
}


def rope_tables(args: ModelArgs, max_seq: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_seq, head_dim] in float32 (HF's rotate_half layout)."""
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    sc = args.rope_scaling
    if sc and sc.get("rope_type", sc.get("type")) == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where((wavelen <= old / lo) & (wavelen >= old / hi), mid, scaled)
    freqs = torch.outer(torch.arange(max_seq, dtype=torch.float64), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float().to(device), emb.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., heads, T, hd]; cos/sin broadcastable [..., 1, T, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    """Sum the row-parallel partial outputs over the ranks (in place); no-op without a group (N=1)."""
    if group is not None:
        import torch.distributed as dist
        dist.all_reduce(x, group=group)
    return x


class KVCache(nn.Module):
    """One layer's cache: [max_slots + 1, kv_heads, max_seq, head_dim]; the last row is scratch."""

    def __init__(self, max_slots: int, max_seq: int, n_kv_heads: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (max_slots + 1, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, tp_size: int = 1):
        super().__init__()
        hd, bias = args.head_dim, args.qkv_bias
        # this rank's heads (all of them when tp_size is 1)
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads // tp_size, args.n_kv_heads // tp_size, hd
        self.split = [self.n_heads * hd, self.n_kv_heads * hd, self.n_kv_heads * hd]   # q, k, v rows
        self.qkv_proj = nn.Linear(args.dim, sum(self.split), bias=bias)
        self.o_proj = nn.Linear(self.n_heads * hd, args.dim, bias=False)
        self.cache: KVCache | None = None
        self.group = None   # the tensor-parallel process group (None: one rank)

    def _qkv(self, x: torch.Tensor):
        b, t, _ = x.shape
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def decode(self, x, cos, sin, slot_ids, pos, mask):
        """One token per row. x [B, 1, dim]; cos/sin [B, 1, 1, hd]; mask [B, 1, 1, S]."""
        q, k, v = self._qkv(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache = self.cache
        cache.k[slot_ids, :, pos] = k[:, :, 0]
        cache.v[slot_ids, :, pos] = v[:, :, 0]
        keys, values = cache.k.index_select(0, slot_ids), cache.v.index_select(0, slot_ids)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return all_reduce(self.o_proj(out.transpose(1, 2).reshape(x.shape[0], 1, -1)), self.group)

    def prefill(self, x, cos, sin, slot: int):
        """A whole prompt for one slot. x [1, T, dim]; cos/sin [1, 1, T, hd]."""
        q, k, v = self._qkv(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        t = x.shape[1]
        self.cache.k[slot, :, :t] = k[0]
        self.cache.v[slot, :, :t] = v[0]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return all_reduce(self.o_proj(out.transpose(1, 2).reshape(1, t, -1)), self.group)

    def decode_fused(self, x, rope_cos, rope_sin, slot_ids, pos):
        """decode() through the fused kernels. x [B, dim]; rope tables [max_seq, hd] float32."""
        cache = self.cache
        q = K.rope_to_cache(self.qkv_proj(x), rope_cos, rope_sin, pos, slot_ids, cache.k, cache.v,
                            self.n_heads, self.n_kv_heads, self.head_dim)
        return all_reduce(self.o_proj(K.decode_attention(q, cache.k, cache.v, slot_ids, pos)), self.group)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, tp_size: int = 1):
        super().__init__()
        ffn = args.ffn_dim // tp_size
        self.gate_up_proj = nn.Linear(args.dim, 2 * ffn, bias=False)   # gate rows, then up rows
        self.down_proj = nn.Linear(ffn, args.dim, bias=False)
        self.group = None

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return all_reduce(self.down_proj(F.silu(gate) * up), self.group)

    def forward_fused(self, x):
        return all_reduce(self.down_proj(K.silu_mul(self.gate_up_proj(x))), self.group)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, tp_size: int = 1):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, tp_size)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args, tp_size)

    def decode(self, x, cos, sin, slot_ids, pos, mask):
        x = x + self.self_attn.decode(self.input_layernorm(x), cos, sin, slot_ids, pos, mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def prefill(self, x, cos, sin, slot):
        x = x + self.self_attn.prefill(self.input_layernorm(x), cos, sin, slot)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, tp_size: int = 1):
        super().__init__()
        self.args, self.tp_size = args, tp_size
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, tp_size) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.max_slots = self.max_seq = 0
        self.kernels = "plain"   # or "fused" (engine/kernels.py): set by the engine

    def set_group(self, group) -> None:
        """The process group the row-parallel layers all-reduce over (tensor parallelism)."""
        for layer in self.layers:
            layer.self_attn.group = layer.mlp.group = group

    def cache_bytes(self, max_slots: int, max_seq: int) -> int:
        """What setup_caches allocates for the KV cache (K and V of every layer, the scratch row too)."""
        a = self.layers[0].self_attn
        per_layer = 2 * (max_slots + 1) * a.n_kv_heads * max_seq * a.head_dim * self.embed_tokens.weight.element_size()
        return per_layer * len(self.layers)

    def setup_caches(self, max_slots: int, max_seq: int) -> None:
        """Allocate the static KV cache (max_slots rows + 1 scratch row) and the RoPE tables."""
        p = self.embed_tokens.weight
        self.max_slots, self.max_seq = max_slots, max_seq
        for layer in self.layers:
            layer.self_attn.cache = KVCache(max_slots, max_seq, layer.self_attn.n_kv_heads, self.args.head_dim,
                                            p.dtype, p.device)
        cos, sin = rope_tables(self.args, max_seq, p.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("positions", torch.arange(max_seq, device=p.device), persistent=False)

    def decode(self, tokens: torch.Tensor, slot_ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens, slot_ids, pos: [B] int64 on the model's device. Returns float32 logits [B, vocab]."""
        if self.kernels == "fused":
            return self.decode_fused(tokens, slot_ids, pos)
        x = self.embed_tokens(tokens).unsqueeze(1)
        dtype = x.dtype
        cos = self.rope_cos[pos].to(dtype)[:, None, None, :]
        sin = self.rope_sin[pos].to(dtype)[:, None, None, :]
        mask = (self.positions[None, :] <= pos[:, None])[:, None, None, :]
        for layer in self.layers:
            x = layer.decode(x, cos, sin, slot_ids, pos, mask)
        return self.lm_head(self.norm(x))[:, 0].float()

    def decode_fused(self, tokens: torch.Tensor, slot_ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """decode() through the fused kernels: the residual stream is one [B, dim] tensor that each
        norm kernel adds the previous sub-layer's output into, in place."""
        residual = self.embed_tokens(tokens)
        eps = self.args.norm_eps
        h = K.rms_norm(residual, self.layers[0].input_layernorm.weight, eps)
        for i, layer in enumerate(self.layers):
            out = layer.self_attn.decode_fused(h, self.rope_cos, self.rope_sin, slot_ids, pos)
            h = K.rms_norm(out, layer.post_attention_layernorm.weight, eps, residual)
            out = layer.mlp.forward_fused(h)
            nxt = self.layers[i + 1].input_layernorm.weight if i + 1 < len(self.layers) else self.norm.weight
            h = K.rms_norm(out, nxt, eps, residual)
        return self.lm_head(h).float()

    def prefill(self, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        """tokens [T] int64 for one slot, written to cache positions 0..T-1. Returns last logits [vocab]."""
        t = tokens.shape[0]
        x = self.embed_tokens(tokens)[None]
        cos = self.rope_cos[:t].to(x.dtype)[None, None]
        sin = self.rope_sin[:t].to(x.dtype)[None, None]
        for layer in self.layers:
            x = layer.prefill(x, cos, sin, slot)
        return self.lm_head(self.norm(x[:, -1]))[0].float()


def empty_model(args: ModelArgs, device, dtype, tp_size: int = 1) -> Transformer:
    """Uninitialised weights (this rank's shards) allocated straight on ``device`` in ``dtype``."""
    with torch.device("meta"):
        model = Transformer(args, tp_size)
    model = model.to(dtype).to_empty(device=device)
    if args.tie_embeddings:   # to_empty unties shared parameters
        model.lm_head.weight = model.embed_tokens.weight
    return model


def build_random(args: ModelArgs, device, dtype, seed: int = 0, rank: int = 0, tp_size: int = 1) -> Transformer:
    """Random weights, drawn on the target device (no fp32 copy on the host), scaled so activations
    and logits stay in a sane range. With tensor parallelism each rank draws every whole weight in
    turn (one at a time) and keeps its shard, so N ranks hold exactly the weights of one."""
    from cgwatch.engine.tensor_parallel import full_shape, fused_parts, shard

    model = empty_model(args, device, dtype, tp_size)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif tp_size == 1:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]), generator=gen)
            else:
                whole = torch.empty(full_shape(name, p.shape, tp_size), dtype=dtype, device=device)
                whole.normal_(0.0, 1.0 / math.sqrt(whole.shape[-1]), generator=gen)
                p.copy_(shard(whole, name, rank, tp_size, fused_parts(name, args)))
                del whole
    return model.eval().requires_grad_(False)
