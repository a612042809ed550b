"""Where a decode step runs: the function that graphs capture and eager mode calls directly.

All per-request state lives on the device, indexed by KV slot, so a step needs no host sync:
``next_token[slot]`` (the token to feed), ``pos[slot]`` (its position). The only input a step reads
is ``slot_buf[:n]`` (static, shared by all graphs); rows past the real batch hold the scratch slot, so
padding rows read and write only the scratch KV row.
"""

from __future__ import annotations

import functools

import torch

from cgwatch.engine.model import Transformer

STAGING_BUFFERS = 8   # > the loop's max steps in flight + 1


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy (temperature 0) or temperature sampling, without a host sync (gpt-fast's exponential trick)."""
    if temperature <= 0:
        return argmax_rows(logits)
    probs = torch.softmax(logits / temperature, dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return argmax_rows(probs / noise)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(-1)`` of [B, V] in two passes: the argmax of each of ``k`` equal pieces of a row,
    then of the pieces' maxima. Same index (the first maximum: a piece's first, in the first piece
    holding the maximum), but a whole GPU works on a row: one argmax over 128,256 logits at batch 1
    took 28 µs of a 1.1 ms step on an H200 (probes/step_profile.py). k: a divisor of V near sqrt(V)."""
    b, v = x.shape
    k = _pieces(v)
    if k == 1:
        return x.argmax(dim=-1)
    top, idx = x.view(b, k, v // k).max(dim=-1)    # per piece: its maximum and its first index
    first = top.argmax(dim=-1, keepdim=True)       # the first piece with the overall maximum
    return (first * (v // k) + idx.gather(1, first))[:, 0]


@functools.cache
def _pieces(v: int) -> int:
    best = 1
    for k in range(2, 1025):
        if v % k == 0 and v // k >= 64 and abs(k * k - v) < abs(best * best - v):
            best = k
    return best


class DecodeState:
    """Device-side per-slot state and the static slot-id input of every step."""

    def __init__(self, model: Transformer, max_batch: int, temperature: float = 0.0, seed: int = 0):
        device = model.embed_tokens.weight.device
        self.model, self.device, self.temperature = model, device, temperature
        self.scratch = model.max_slots                     # the extra KV row padding rows use
        n = model.max_slots + 1
        self.next_token = torch.zeros(n, dtype=torch.long, device=device)
        self.pos = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_buf = torch.full((max_batch,), self.scratch, dtype=torch.long, device=device)
        self.cuda = device.type == "cuda"
        # Pinned staging buffers for the slot ids, used round-robin: a buffer is reused only after
        # the copy out of it finished (the loop keeps at most max_inflight steps pending).
        self._staging = [torch.empty(max_batch, dtype=torch.long, pin_memory=True).numpy()
                         for _ in range(STAGING_BUFFERS)] if self.cuda else []
        self._next_staging = 0
        self.prompt_gen = torch.Generator(device=device).manual_seed(seed)

    def set_slots(self, slots: list[int], rows: int) -> None:
        """Write the batch's slot ids into ``slot_buf[:rows]``, padding with the scratch slot."""
        n = len(slots)
        if not self.cuda:
            ids = slots + [self.scratch] * (rows - n)
            self.slot_buf[:rows].copy_(torch.tensor(ids, dtype=torch.long))
            return
        k = self._next_staging
        self._next_staging = (k + 1) % STAGING_BUFFERS
        buf = self._staging[k]
        buf[:n] = slots
        buf[n:rows] = self.scratch
        self.slot_buf[:rows].copy_(torch.from_numpy(buf[:rows]), non_blocking=True)

    def decode(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each of ``slot_buf[:rows]``: logits [rows, vocab] (float32) and the sampled tokens."""
        ids = self.slot_buf[:rows]
        pos = self.pos[ids]
        logits = self.model.decode(self.next_token[ids], ids, pos)
        new = sample(logits, self.temperature)
        self.next_token[ids] = new
        self.pos[ids] = pos + 1
        self.pos[self.scratch:].zero_()   # padding rows always write scratch position 0
        return logits, new

    def prefill(self, slot: int, prompt_len: int) -> None:
        """Eager prefill of a random prompt into ``slot``; its first sampled token becomes next_token."""
        vocab = self.model.args.vocab_size
        prompt = torch.randint(vocab, (prompt_len,), device=self.device, generator=self.prompt_gen)
        logits = self.model.prefill(prompt, slot)
        self.next_token[slot:slot + 1] = sample(logits[None], self.temperature)
        self.pos[slot:slot + 1].fill_(prompt_len)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_token.clone(), self.pos.clone()

    def restore(self, snap: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.next_token.copy_(snap[0])
        self.pos.copy_(snap[1])
