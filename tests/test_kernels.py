"""The fused decode kernels (engine/kernels.py) against the plain PyTorch ops they replace, run on the
CPU through Triton's interpreter (fixture triton_interpret), and the engine's choice of kernels."""

import pytest
import torch
import torch.nn.functional as F

from cgwatch.engine import kernels as KN
from cgwatch.engine.control import make_command, parse_action
from cgwatch.engine.loop import Engine, EngineConfig
from cgwatch.engine.model import ModelArgs, RMSNorm, apply_rope, build_random, rope_tables
from cgwatch.errors import CgwatchError
from cgwatch.workload import WorkloadSpec


def test_rms_norm_with_and_without_residual(triton_interpret):
    K = triton_interpret
    torch.manual_seed(0)
    x, r = torch.randn(3, 80), torch.randn(3, 80)
    norm = RMSNorm(80, 1e-5)
    norm.weight.data = torch.randn(80)
    torch.testing.assert_close(K.rms_norm(x, norm.weight, 1e-5), norm(x), rtol=1e-5, atol=1e-5)
    res = r.clone()
    y = K.rms_norm(x, norm.weight, 1e-5, res)
    torch.testing.assert_close(res, x + r)                     # the residual stream, updated in place
    torch.testing.assert_close(y, norm(x + r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 80])
def test_rope_to_cache_rotates_q_and_k_and_writes_the_cache(triton_interpret, head_dim):
    K = triton_interpret
    torch.manual_seed(1)
    args = ModelArgs(dim=4 * head_dim, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=8, vocab_size=8,
                     explicit_head_dim=head_dim)
    cos, sin = rope_tables(args, 64, "cpu")
    nh, nkv, hd = 4, 2, head_dim
    qkv = torch.randn(3, (nh + 2 * nkv) * hd)
    pos, slots = torch.tensor([0, 17, 63]), torch.tensor([2, 0, 4])
    kc, vc = torch.zeros(5, nkv, 64, hd), torch.zeros(5, nkv, 64, hd)
    q = K.rope_to_cache(qkv, cos, sin, pos, slots, kc, vc, nh, nkv, hd)
    qr, kr, vr = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=1)
    c, s = cos[pos][:, None], sin[pos][:, None]
    torch.testing.assert_close(q, apply_rope(qr.view(3, nh, hd), c, s))
    for b in range(3):
        torch.testing.assert_close(kc[slots[b], :, pos[b]], apply_rope(kr.view(3, nkv, hd), c, s)[b])
        torch.testing.assert_close(vc[slots[b], :, pos[b]], vr.view(3, nkv, hd)[b])
    assert int((kc != 0).any(-1).sum()) == 3 * nkv           # nothing else written


@pytest.mark.parametrize("group", [1, 4])
def test_decode_attention_reads_each_rows_live_positions(triton_interpret, group):
    """Against SDPA over the whole cache row with a position mask; lengths across chunk boundaries."""
    K = triton_interpret
    torch.manual_seed(2)
    nkv, hd, max_seq = 2, 64, 600
    assert KN.attention_chunk(max_seq) < max_seq              # several chunks: the merge is exercised
    kc, vc = torch.randn(6, nkv, max_seq, hd), torch.randn(6, nkv, max_seq, hd)
    slots, pos = torch.tensor([1, 5, 0, 3]), torch.tensor([0, 255, 256, 599])
    q = torch.randn(4, nkv * group, hd)
    mask = (torch.arange(max_seq)[None, :] <= pos[:, None])[:, None, None, :]
    ref = F.scaled_dot_product_attention(q[:, :, None], kc[slots], vc[slots], attn_mask=mask, enable_gqa=True)
    for chunk, block in ((None, None), (64, 32), (608, 32)):   # default; many chunks; one (no merge pass)
        out = K.decode_attention(q, kc, vc, slots, pos, chunk, block)
        torch.testing.assert_close(out, ref[:, :, 0].reshape(4, -1), rtol=1e-5, atol=1e-5)


def test_silu_mul(triton_interpret):
    K = triton_interpret
    gu = torch.randn(2, 2 * 1500)
    g, u = gu.chunk(2, dim=1)
    torch.testing.assert_close(K.silu_mul(gu), F.silu(g) * u)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3)])
def test_fused_decode_follows_the_plain_one(triton_interpret, dtype, tol):
    """Several steps of the whole model, padding rows on the scratch slot: the same tokens and logits."""
    args = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=96, vocab_size=100)
    runs = {}
    for kind in ("plain", "fused"):
        torch.manual_seed(3)
        m = build_random(args, "cpu", dtype, seed=1)
        m.setup_caches(6, 300)
        m.kernels = kind
        for s in range(5):
            m.prefill(torch.randint(100, (3 + 40 * s,)), s)
        slots, pos, tok = torch.tensor([0, 3, 4, 6]), torch.tensor([3, 123, 163, 0]), torch.tensor([1, 2, 3, 4])
        out = []
        for _ in range(3):
            logits = m.decode(tok, slots, pos)
            tok, pos = logits.argmax(-1), pos + torch.tensor([1, 1, 1, 0])
            out.append(logits)
        runs[kind] = torch.stack(out)
    a, b = runs["plain"].float(), runs["fused"].float()
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert float((a - b).norm() / a.norm()) < tol


# -- the engine's choice ------------------------------------------------------------------------

def _cfg(**kw) -> EngineConfig:
    return EngineConfig(model="tiny", device="cpu", max_seq=64, mode="eager", nvtx=False,
                        workload=WorkloadSpec(arrival="fixed:2", max_concurrency=2, prompt_len="fixed:4", output_len="fixed:8",
                                              max_seq=64), **kw)


def test_auto_runs_plain_kernels_without_cuda_and_says_why():
    eng = Engine(_cfg(), lambda r: None)
    h = eng.header()
    assert (h["kernels"], h["kernels_why"]) == ("plain", "fused kernels need CUDA (no CUDA here)")
    assert eng.control_state()["kernels"] == "plain"
    eng.close()


def test_fused_asked_for_without_cuda_is_one_line_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(CgwatchError, match=r"^--kernels fused: fused kernels need CUDA \(no CUDA here\)$"):
        Engine(_cfg(kernels="fused"), lambda r: None)
    with pytest.raises(CgwatchError, match="--kernels must be one of auto, fused, plain"):
        Engine(_cfg(kernels="fast"), lambda r: None)


def test_kernels_command_is_checked_at_the_door():
    assert make_command("kernels", "fused").value == "fused"
    assert parse_action("kernels=plain").value == "plain"
    for bad in ("Fused", 1, None):
        with pytest.raises(CgwatchError, match="bad kernels"):
            make_command("kernels", bad)


def test_switching_kernels_mid_run_keeps_the_greedy_tokens(triton_interpret):
    """plain for 3 steps, then fused (the command path): the same tokens as plain all along (fp32)."""
    def run(switch: bool):
        recs = []
        eng = Engine(_cfg(kernels="plain", schedule=((3, make_command("kernels", "fused")),) if switch else ()),
                     recs.append)
        eng.start()
        eng.run(max_steps=6)
        eng.close()
        return recs, eng.state.next_token.clone(), eng.state.pos.clone()

    (_, tok_a, pos_a), (recs, tok_b, pos_b) = run(False), run(True)
    assert [e.get("kernels") for e in recs if e.get("kind") == "state"][-1] == "fused"
    assert any(e.get("message") == "kernels: fused" for e in recs)
    assert int(pos_a.max()) > 4 and torch.equal(pos_a, pos_b)
    assert torch.equal(tok_a, tok_b)


def test_two_pass_argmax_is_argmax_ties_included():
    from cgwatch.engine.step import argmax_rows
    torch.manual_seed(4)
    x = torch.randn(5, 32000)
    x[1, 7], x[1, 31999] = 50.0, 50.0          # a tie across pieces: the first wins
    x[2, 100], x[2, 101] = 9.0, 9.0            # a tie inside a piece
    x[3] = 0.0                                 # all equal: index 0
    assert torch.equal(argmax_rows(x), x.argmax(-1))
    assert argmax_rows(x)[1] == 7 and argmax_rows(x)[3] == 0
    odd = torch.randn(2, 101)                  # no good divisor: plain argmax
    assert torch.equal(argmax_rows(odd), odd.argmax(-1))
