"""Where the fused decode kernels live: four Triton kernels that replace the plain PyTorch ops of a
decode step (``--kernels fused``; model.py's ``decode_fused`` calls them).

- ``rms_norm``: the residual add and the RMSNorm of the next sub-layer in one pass (the residual is
  updated in place), in Hugging Face's rounding order: the sum rounds to the model dtype, the norm
  runs in float32, rounds, then scales by the weight.
- ``rope_to_cache``: RoPE on the q and k heads of the fused qkv projection, and k and v written into
  the static KV cache at each row's slot and position, in one launch.
- ``decode_attention``: flash-decoding over the cache: each row reads only its live positions
  (0..pos), in one pass, or (few rows, long caches) split into chunks run in parallel, then one
  small kernel merges the chunks. Every shape
  and grid depends only on the batch and the cache size, and lengths are read on the device, so the
  step stays capturable and one compiled kernel serves every bucket.
- ``silu_mul``: SwiGLU's silu(gate) * up on the fused gate/up projection.

On a machine without CUDA or Triton, ``unavailable()`` says why in one line and the engine runs the
plain kernels. ``TRITON_INTERPRET=1`` runs these kernels on CPU tensors (float32, float16) for tests.
"""

from __future__ import annotations

import functools
import os

import torch

ATTN_BLOCK = 32       # cache positions per inner iteration
MIN_CHUNK = 256       # positions per split of one row's attention
MAX_SPLITS = 64       # at most this many splits per row (longer caches get longer chunks)
FEW_PROGRAMS = 128    # rows x kv heads below this, a long cache row is split in chunks (more SMs at work)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:   # not installed, or broken
        return f"Triton is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def unavailable(device: torch.device, dtype: torch.dtype, interpreter: bool = False) -> str | None:
    """Why the fused kernels cannot run here (one line), or None when they can. ``interpreter``: CPU
    tensors through Triton's interpreter count (tests; asked for by name, never picked by auto)."""
    if device.type != "cuda" and not (interpreter and device.type == "cpu" and interpreting()):
        return "fused kernels need CUDA (no CUDA here)"
    err = _triton_error()
    if err:
        return f"fused kernels need Triton: {err}"
    if device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        return "fused kernels in bfloat16 need compute capability 8.0 or newer"
    return None


KINDS = ("auto", "fused", "plain")


def choose(requested: str, device: torch.device, dtype: torch.dtype) -> tuple[str, str | None]:
    """--kernels -> (the kernels to run, why not fused). ``auto`` takes fused where they can run;
    ``fused`` where they cannot is a one-line error."""
    from cgwatch.errors import CgwatchError
    if requested not in KINDS:
        raise CgwatchError(f"--kernels must be one of {', '.join(KINDS)}; got {requested!r}")
    if requested == "plain":
        return "plain", None
    why = unavailable(device, dtype, interpreter=requested == "fused")
    if why and requested == "fused":
        raise CgwatchError(f"--kernels fused: {why}")
    return ("plain", why) if why else ("fused", None)


@functools.cache
def _k():
    """The kernels, compiled lazily (importing triton is slow and needs it installed)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(X, R, W, Y, sx, sr, sy, N, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < N
        x = tl.load(X + row * sx + cols, mask=m, other=0.0)
        if HAS_RES:   # residual += x (rounded to the dtype, as x + delta is), then norm the sum
            x = (x.to(tl.float32) + tl.load(R + row * sr + cols, mask=m, other=0.0).to(tl.float32))
            x = x.to(Y.dtype.element_ty)
            tl.store(R + row * sr + cols, x, mask=m)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / N + eps)
        w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        y = (xf * rstd).to(Y.dtype.element_ty).to(tl.float32) * w
        tl.store(Y + row * sy + cols, y.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def rope_cache_kernel(QKV, COS, SIN, POS, SLOT, QOUT, KC, VC, s_qkv, s_qo_b, s_qo_h, s_cos,
                          s_c_slot, s_c_head, s_c_pos, NH: tl.constexpr, NKV: tl.constexpr,
                          HD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, HD_PAD: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)        # 0..NH-1: a q head; NH..NH+NKV-1: a kv head
        pos = tl.load(POS + b)
        d = tl.arange(0, HALF_PAD)
        dm = d < HALF
        cos = tl.load(COS + pos * s_cos + d, mask=dm, other=0.0)   # the table is cat(f, f): halves alike
        sin = tl.load(SIN + pos * s_cos + d, mask=dm, other=0.0)
        src = QKV + b * s_qkv + h * HD
        x1 = tl.load(src + d, mask=dm, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF + d, mask=dm, other=0.0).to(tl.float32)
        o1 = (x1 * cos - x2 * sin).to(QOUT.dtype.element_ty)
        o2 = (x2 * cos + x1 * sin).to(QOUT.dtype.element_ty)
        if h < NH:
            dst = QOUT + b * s_qo_b + h * s_qo_h
            tl.store(dst + d, o1, mask=dm)
            tl.store(dst + HALF + d, o2, mask=dm)
        else:
            kh = h - NH
            slot = tl.load(SLOT + b)
            off = slot * s_c_slot + kh * s_c_head + pos * s_c_pos
            tl.store(KC + off + d, o1, mask=dm)
            tl.store(KC + off + HALF + d, o2, mask=dm)
            e = tl.arange(0, HD_PAD)
            v = tl.load(QKV + b * s_qkv + (NH + NKV + kh) * HD + e, mask=e < HD, other=0.0)
            tl.store(VC + off + e, v, mask=e < HD)

    @triton.jit
    def attn_chunk_kernel(Q, KC, VC, SLOT, POS, OP, ML, s_q_b, s_q_h, s_c_slot, s_c_head, s_c_pos,
                          s_op_b, s_op_h, s_op_s, s_ml_b, s_ml_h, scale, CHUNK: tl.constexpr,
                          GROUP: tl.constexpr, G_PAD: tl.constexpr, HD: tl.constexpr, HD_PAD: tl.constexpr,
                          BLOCK: tl.constexpr, IEEE: tl.constexpr, SINGLE: tl.constexpr):
        # SINGLE: one chunk covers the whole cache row: OP is the output [B, H * HD], no merge pass
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(POS + b) + 1          # positions 0..pos, the new token's included
        start = split * CHUNK
        if start < length:                     # later chunks of a short row do nothing
            end = tl.minimum(start + CHUNK, length)
            slot = tl.load(SLOT + b)
            g = tl.arange(0, G_PAD)
            d = tl.arange(0, HD_PAD)
            gm = g < GROUP
            dm = d < HD
            heads = kvh * GROUP + g
            q = tl.load(Q + b * s_q_b + heads[:, None] * s_q_h + d[None, :], mask=gm[:, None] & dm[None, :],
                        other=0.0)
            base = slot * s_c_slot + kvh * s_c_head
            m_i = tl.full([G_PAD], float("-inf"), tl.float32)
            l_i = tl.zeros([G_PAD], tl.float32)
            acc = tl.zeros([G_PAD, HD_PAD], tl.float32)
            for n0 in range(start, end, BLOCK):
                n = n0 + tl.arange(0, BLOCK)
                nm = n < end
                kv_mask = nm[:, None] & dm[None, :]
                k = tl.load(KC + base + n[:, None] * s_c_pos + d[None, :], mask=kv_mask, other=0.0)
                if IEEE:
                    s = tl.dot(q, tl.trans(k), input_precision="ieee")
                else:
                    s = tl.dot(q, tl.trans(k))
                s = tl.where(nm[None, :], s * scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                p = tl.exp(s - m_new[:, None])
                alpha = tl.exp(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                v = tl.load(VC + base + n[:, None] * s_c_pos + d[None, :], mask=kv_mask, other=0.0)
                if IEEE:
                    pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
                else:
                    pv = tl.dot(p.to(v.dtype), v)
                acc = acc * alpha[:, None] + pv
                m_i = m_new
            out = OP + b * s_op_b + heads[:, None] * s_op_h + split * s_op_s + d[None, :]
            if SINGLE:
                tl.store(out, (acc / l_i[:, None]).to(OP.dtype.element_ty), mask=gm[:, None] & dm[None, :])
            else:
                tl.store(out, acc, mask=gm[:, None] & dm[None, :])
                ml = ML + b * s_ml_b + heads * s_ml_h + split * 2
                tl.store(ml, m_i, mask=gm)
                tl.store(ml + 1, l_i, mask=gm)

    @triton.jit
    def attn_merge_kernel(OP, ML, POS, OUT, s_op_b, s_op_h, s_op_s, s_ml_b, s_ml_h, s_out_b,
                          CHUNK: tl.constexpr, HD: tl.constexpr, HD_PAD: tl.constexpr, S_PAD: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        n_split = (tl.load(POS + b) + CHUNK) // CHUNK     # ceil((pos + 1) / CHUNK)
        s = tl.arange(0, S_PAD)
        sm = s < n_split
        d = tl.arange(0, HD_PAD)
        dm = d < HD
        ml = ML + b * s_ml_b + h * s_ml_h + s * 2
        m = tl.load(ml, mask=sm, other=float("-inf"))
        l_ = tl.load(ml + 1, mask=sm, other=0.0)
        w = tl.exp(m - tl.max(m, axis=0))
        w = tl.where(sm, w, 0.0)
        o = tl.load(OP + b * s_op_b + h * s_op_h + s[:, None] * s_op_s + d[None, :],
                    mask=sm[:, None] & dm[None, :], other=0.0)
        out = tl.sum(o * w[:, None], axis=0) / tl.sum(l_ * w, axis=0)
        tl.store(OUT + b * s_out_b + h * HD + d, out.to(OUT.dtype.element_ty), mask=dm)

    @triton.jit
    def silu_mul_kernel(GU, OUT, s_gu, s_out, F, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < F
        g = tl.load(GU + b * s_gu + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(GU + b * s_gu + F + cols, mask=m, other=0.0).to(tl.float32)
        a = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)   # F.silu rounds here
        tl.store(OUT + b * s_out + cols, (a * u).to(OUT.dtype.element_ty), mask=m)

    return {"rms_norm": rms_norm_kernel, "rope_cache": rope_cache_kernel, "attn_chunk": attn_chunk_kernel,
            "attn_merge": attn_merge_kernel, "silu_mul": silu_mul_kernel}


def _pow2(n: int, least: int = 1) -> int:
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of x [B, dim]; with ``residual``: ``residual += x`` (in place) and the norm of the sum."""
    y = torch.empty_like(x)
    has_res = residual is not None
    r = residual if has_res else x
    _k()["rms_norm"][(x.shape[0],)](x, r, weight, y, x.stride(0), r.stride(0), y.stride(0), x.shape[1], eps,
                                    HAS_RES=has_res, BLOCK=_pow2(x.shape[1]))
    return y


def rope_to_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                  slot_ids: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  n_heads: int, n_kv_heads: int, head_dim: int) -> torch.Tensor:
    """qkv [B, (n_heads + 2 n_kv_heads) * head_dim] -> q [B, n_heads, head_dim] after RoPE; k (after RoPE)
    and v go to ``cache[slot_ids[b], :, pos[b]]``. cos/sin: [max_seq, head_dim] float32 tables."""
    b = qkv.shape[0]
    q = torch.empty((b, n_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    half = head_dim // 2
    _k()["rope_cache"][(b, n_heads + n_kv_heads)](
        qkv, cos, sin, pos, slot_ids, q, k_cache, v_cache, qkv.stride(0), q.stride(0), q.stride(1), cos.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), NH=n_heads, NKV=n_kv_heads, HD=head_dim,
        HALF=half, HALF_PAD=_pow2(half), HD_PAD=_pow2(head_dim))
    return q


def attention_chunk(max_seq: int, least: int = MIN_CHUNK, block: int = ATTN_BLOCK) -> int:
    """Cache positions per split: ``least``, longer when the cache would need over MAX_SPLITS splits."""
    chunk = max(least, -(-max_seq // MAX_SPLITS))
    return -(-chunk // block) * block


def attention_config(batch: int, n_kv: int, head_dim: int, max_seq: int) -> tuple[int, int, int]:
    """(chunk, block, warps) for a batch, from a sweep on an H200 (probes/attention_tune.py, 8 layers'
    caches in turn; docs/BENCHMARKS.md). One pass over the whole row (no merge kernel) won at every
    batch of 1-64 rows at contexts of 100-400, and at 64 rows up to 1,000 (3.8 TB/s); only few rows
    with a long context gained from splitting (8 rows at 1,000: 9.6 µs split, 14.4 one pass). So: one
    pass up to a 1,024-position cache or from FEW_PROGRAMS rows x kv heads on, else chunks of 256."""
    many = batch * n_kv >= FEW_PROGRAMS
    wide = batch * n_kv >= 2 * FEW_PROGRAMS
    block = ATTN_BLOCK if wide and head_dim > 64 else 64
    warps = 2 if wide else 4
    if many or max_seq <= 1024:
        return -(-max_seq // block) * block, block, warps
    return attention_chunk(max_seq, MIN_CHUNK, 64), 64, 4


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_ids: torch.Tensor,
                     pos: torch.Tensor, chunk: int | None = None, block: int | None = None,
                     num_warps: int | None = None) -> torch.Tensor:
    """Attention of one new token per row over its cache row's positions 0..pos[b] (GQA: q heads
    share kv heads in groups). q [B, H, hd]; caches [slots, KVH, max_seq, hd]. Returns [B, H * hd].
    ``chunk``, ``block``, ``num_warps``: tuning (probes/attention_tune.py); chunk a multiple of block."""
    b, n_heads, hd = q.shape
    n_kv, max_seq = k_cache.shape[1], k_cache.shape[2]
    group = n_heads // n_kv
    auto = attention_config(b, n_kv, hd, max_seq)
    chunk, block, num_warps = chunk or auto[0], block or auto[1], num_warps or auto[2]
    n_split = -(-max_seq // chunk)
    out = torch.empty((b, n_heads * hd), dtype=q.dtype, device=q.device)
    ks = k_cache.stride()
    k = _k()
    consts = dict(CHUNK=chunk, GROUP=group, G_PAD=_pow2(group, 16), HD=hd, HD_PAD=_pow2(hd, 16), BLOCK=block,
                  IEEE=q.dtype == torch.float32, SINGLE=n_split == 1, num_warps=num_warps)
    if n_split == 1:   # one program a row and kv head writes the output itself
        k["attn_chunk"][(b, n_kv, 1)](
            q, k_cache, v_cache, slot_ids, pos, out, out, q.stride(0), q.stride(1), ks[0], ks[1], ks[2],
            out.stride(0), hd, 0, 0, 0, hd ** -0.5, **consts)
        return out
    part = torch.empty((b, n_heads, n_split, hd), dtype=torch.float32, device=q.device)
    ml = torch.empty((b, n_heads, n_split, 2), dtype=torch.float32, device=q.device)
    k["attn_chunk"][(b, n_kv, n_split)](
        q, k_cache, v_cache, slot_ids, pos, part, ml, q.stride(0), q.stride(1), ks[0], ks[1], ks[2],
        part.stride(0), part.stride(1), part.stride(2), ml.stride(0), ml.stride(1), hd ** -0.5, **consts)
    k["attn_merge"][(b, n_heads)](
        part, ml, pos, out, part.stride(0), part.stride(1), part.stride(2), ml.stride(0), ml.stride(1),
        out.stride(0), CHUNK=chunk, HD=hd, HD_PAD=_pow2(hd), S_PAD=_pow2(n_split, 2))
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [B, 2F] (gate then up) -> silu(gate) * up [B, F]."""
    b, f = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((b, f), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _k()["silu_mul"][(b, -(-f // block))](gate_up, out, gate_up.stride(0), out.stride(0), f, BLOCK=block)
    return out
