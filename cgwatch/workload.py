"""A seeded continuous-batching simulator: which requests are live in the decode batch, step by step.

The engine calls ``plan = workload.next_step()`` once per decode step, prefills ``plan.admitted``,
frees ``plan.finished`` slots and decodes one token for every slot in ``plan.active``.

Arrival processes (``WorkloadSpec.arrival``):

* ``poisson:RATE`` -- a Poisson number of new requests per step (mean RATE, at most ``MAX_RATE``)
  joins a FIFO queue; queued requests are admitted while a KV slot is free. When nothing is live and
  nothing is queued, empty ticks are fast-forwarded (counted in ``idle_steps``) so ``active`` is
  never empty -- except at rate 0 (``set_rate(0)``: no new requests): once the live requests finished,
  ``next_step()`` returns a plan with an empty ``active`` and does not use up a step (the engine
  then waits for a command; a later call goes on from there).
* ``fixed:B`` -- exactly B requests live at every step; a finished request is replaced at once.
* ``replay:PATH`` -- a file of batch sizes, one per step; the batch is grown (admissions) or shrunk
  (the most recently admitted requests are retired) to match. ``next_step()`` returns None at the end.

Everything random comes from one ``random.Random(seed)``: the same spec gives the same plans.
A request's lengths are drawn when it is admitted, so the queue is just a count.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from cgwatch.errors import CgwatchError


class WorkloadError(CgwatchError):
    """A bad workload spec or replay file."""


MAX_RATE = 1e6   # new requests per step; beyond it a rate means nothing more (and its draws overflow)


@dataclass(frozen=True, slots=True)
class Admit:
    req_id: int
    slot: int
    prompt_len: int
    output_len: int  # decode steps this request needs


@dataclass(slots=True)
class StepPlan:
    step: int            # decode-step index, 0, 1, 2, ...
    idle_steps: int      # empty ticks fast-forwarded before this step
    finished: list[int] = field(default_factory=list)   # slots freed before this step
    admitted: list[Admit] = field(default_factory=list)  # joining now (prefill them first)
    active: list[int] = field(default_factory=list)     # slots decoding now, admission order


@dataclass(frozen=True)
class WorkloadSpec:
    arrival: str = "poisson:0.5"          # poisson:RATE | fixed:B | replay:PATH
    prompt_len: str = "uniform:16:128"    # fixed:N | uniform:A:B | lognormal:MEDIAN:SIGMA
    output_len: str = "uniform:16:256"
    max_concurrency: int = 64             # KV slots; the cap on live requests
    max_seq: int = 1024                   # prompt_len + output_len + 1 <= max_seq (lengths are clamped)
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Length distributions

_LENGTH_FORMS = "expected fixed:N, uniform:A:B or lognormal:MEDIAN:SIGMA"
_LOGNORMAL_CAP = 1e9  # keeps a heavy lognormal tail finite before rounding (clamped later anyway)


def parse_length(spec: str) -> Callable[[random.Random], int]:
    """Parse a length distribution into a sampler ``f(rng) -> int >= 1`` (before max_seq clamping)."""
    def bad(reason: str = _LENGTH_FORMS) -> WorkloadError:
        return WorkloadError(f"bad length distribution {spec!r}: {reason}")

    kind, _, rest = str(spec).strip().partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind == "fixed" and len(args) == 1:
            n = int(args[0])
            if n < 1:
                raise bad("N must be >= 1")
            return lambda rng: n
        if kind == "uniform" and len(args) == 2:
            a, b = int(args[0]), int(args[1])
            if not 1 <= a <= b:
                raise bad("need 1 <= A <= B")
            return lambda rng: rng.randint(a, b)
        if kind == "lognormal" and len(args) == 2:
            median, sigma = float(args[0]), float(args[1])
            if not (0 < median < math.inf and 0 <= sigma < math.inf):
                raise bad("need MEDIAN > 0 and SIGMA >= 0")
            mu = math.log(median)
            return lambda rng: max(1, round(min(rng.lognormvariate(mu, sigma), _LOGNORMAL_CAP)))
    except ValueError:
        raise bad() from None
    raise bad()


def least_length(spec: str) -> int:
    """The least length a (valid) distribution gives: N of fixed:N, A of uniform:A:B, else 1."""
    kind, _, rest = str(spec).strip().partition(":")
    return int(rest.split(":")[0]) if kind in ("fixed", "uniform") else 1


def clamp_note(spec: WorkloadSpec) -> str | None:
    """A line to say that every prompt will be cut to max_seq // 2 (Workload clamps each one), or None."""
    if least_length(spec.prompt_len) <= spec.max_seq // 2:
        return None
    return (f"every prompt of --prompt-len {spec.prompt_len} is cut to {spec.max_seq // 2} tokens "
            f"(a prompt takes at most --max-seq {spec.max_seq} // 2 positions)")


# ---------------------------------------------------------------------------------------------
# Poisson sampling

_PTRS_MIN = 10.0  # from this rate on, transformed rejection beats sequential search


def _poisson_draw(rng: random.Random, rate: float) -> int:
    """A Poisson(rate) draw: inversion for small rates, PTRS (Hormann 1993) for large ones.

    Both are exact; PTRS costs O(1) at any rate and never computes exp(-rate), so nothing underflows.
    """
    if rate < _PTRS_MIN:
        u = rng.random()
        k = 0
        p = cum = math.exp(-rate)
        while u > cum and p > 0:
            k += 1
            p *= rate / k
            cum += p
        return k
    log_rate = math.log(rate)
    b = 0.931 + 2.53 * math.sqrt(rate)
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + rate + 0.43) if us > 0 else -1
        if us >= 0.07 and v <= v_r:
            return k
        if k < 0 or v == 0 or (us < 0.013 and v > us):
            continue
        if (math.log(v * inv_alpha / (a / (us * us) + b))
                <= -rate + k * log_rate - math.lgamma(k + 1)):
            return k


def _first_arrivals(rng: random.Random, rate: float) -> tuple[int, int]:
    """Fast-forward an empty system: (empty ticks before the first arrival, arrivals at that tick).

    Empty ticks are geometric with P(empty) = exp(-rate); the arrival count is Poisson given >= 1.
    Both are drawn directly, so a tiny rate costs no more than a large one.
    """
    idle = int(min(-math.log(1.0 - rng.random()) / rate, 1e18))
    if rate > 1.0:  # P(0) < 0.37: rejection needs < 1.6 draws on average
        while True:
            n = _poisson_draw(rng, rate)
            if n:
                return idle, n
    # Small rate: invert the zero-truncated pmf, starting at k = 1.
    u = rng.random() * -math.expm1(-rate)  # scaled by P(k >= 1)
    k = 1
    p = cum = rate * math.exp(-rate)
    while u > cum and p > 0:
        k += 1
        p *= rate / k
        cum += p
    return idle, k


# ---------------------------------------------------------------------------------------------
# Arrival specs and replay files

_ARRIVAL_FORMS = "expected poisson:RATE, fixed:B or replay:PATH"
_SEPARATORS = re.compile(r"[\s,]+")


def _read_replay(path: str, max_concurrency: int) -> list[int]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise WorkloadError(f"cannot read replay file {path}: {reason}") from None
    sizes: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in _SEPARATORS.split(line.split("#", 1)[0]):
            if not tok:
                continue
            try:
                n = int(tok)
            except ValueError:
                n = 0
            if not 1 <= n <= max_concurrency:
                raise WorkloadError(f"replay file {path} line {lineno}: bad batch size {tok!r} "
                                    f"(expected an integer 1..{max_concurrency})")
            sizes.append(n)
    if not sizes:
        raise WorkloadError(f"replay file {path} has no batch sizes")
    return sizes


# ---------------------------------------------------------------------------------------------
# The simulator

class Workload:
    """Decides, step by step, which requests are live in the decode batch."""

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        for name in ("max_concurrency", "max_seq", "seed"):
            v = getattr(spec, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise WorkloadError(f"{name} must be an integer, got {v!r}")
        if spec.max_concurrency < 1:
            raise WorkloadError(f"max_concurrency must be >= 1, got {spec.max_concurrency}")
        if spec.max_seq < 3:
            raise WorkloadError(f"max_seq must be >= 3 (prompt + output + 1 token), got {spec.max_seq}")
        self._prompt = parse_length(spec.prompt_len)
        self._output = parse_length(spec.output_len)

        self.kind, _, arg = str(spec.arrival).strip().partition(":")
        self._rate = 0.0
        self._fixed = 0
        self._sizes: list[int] = []
        bad = WorkloadError(f"bad arrival {spec.arrival!r}: {_ARRIVAL_FORMS}")
        if self.kind == "poisson":
            try:
                self._rate = float(arg)
            except ValueError:
                raise bad from None
            if not 0 <= self._rate <= MAX_RATE:
                raise WorkloadError(f"bad arrival {spec.arrival!r}: RATE must be a number from 0 to {MAX_RATE:g}")
            if self._rate == 0:
                raise WorkloadError("poisson rate 0 with no live requests: nothing to run (start with a rate "
                                    "> 0; a rate of 0 set while running stops new arrivals)")
            self._rate += 0.0   # -0.0 -> 0.0
        elif self.kind == "fixed":
            try:
                self._fixed = int(arg)
            except ValueError:
                raise bad from None
            if not 1 <= self._fixed <= spec.max_concurrency:
                raise WorkloadError(f"bad arrival {spec.arrival!r}: B must be 1..max_concurrency "
                                    f"({spec.max_concurrency})")
        elif self.kind == "replay" and arg:
            self._sizes = _read_replay(arg, spec.max_concurrency)
        else:
            raise bad

        self._rng = random.Random(spec.seed)
        self._step = 0
        self._next_id = 0
        self._queued = 0
        self._live: dict[int, int] = {}           # slot -> req_id, in admission order
        self._ends: dict[int, list[tuple[int, int]]] = {}  # step a request is freed -> [(req_id, slot)]
        self._free: list[int] = []                # heap of freed slots (all below _fresh)
        self._fresh = 0                           # lowest slot never handed out
        self._finished: list[int] = []            # freed slots not yet reported in a plan

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def rate(self) -> float:
        """The current poisson rate (0.0 for fixed/replay)."""
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the poisson arrival rate from the next step on."""
        if self.kind != "poisson":
            raise WorkloadError(f"set_rate needs a poisson arrival, not {self.spec.arrival!r}")
        try:
            rate = float(rate)
        except (TypeError, ValueError, OverflowError):
            rate = math.nan
        if not 0 <= rate <= MAX_RATE:
            raise WorkloadError(f"bad poisson rate {rate!r}: must be a number from 0 to {MAX_RATE:g}")
        self._rate = rate + 0.0   # -0.0 -> 0.0

    def describe(self) -> dict:
        s = self.spec
        d = {"arrival": s.arrival, "kind": self.kind, "prompt_len": s.prompt_len,
             "output_len": s.output_len, "max_concurrency": s.max_concurrency,
             "max_seq": s.max_seq, "seed": s.seed}
        if self.kind == "poisson":
            d["rate"] = self._rate
        elif self.kind == "fixed":
            d["batch"] = self._fixed
        else:
            d["replay_steps"] = len(self._sizes)
        return d

    def next_step(self) -> StepPlan | None:
        step = self._step
        if self.kind == "replay" and step >= len(self._sizes):
            return None
        live = self._live
        finished = self._finished

        # Free the requests whose last decode step was the previous one.
        ends = self._ends.pop(step, None)
        if ends:
            for rid, slot in ends:
                if live.get(slot) == rid:  # else already retired by a replay shrink
                    del live[slot]
                    self._release(slot)
                    finished.append(slot)

        idle = 0
        if self.kind == "poisson":
            if live or self._queued:
                if self._rate:
                    self._queued += _poisson_draw(self._rng, self._rate)
            else:
                if self._rate == 0:  # nothing live, nothing arrives: an empty plan that uses up no step
                    self._finished = []
                    return StepPlan(step, 0, finished, [], [])
                idle, n = _first_arrivals(self._rng, self._rate)
                self._queued += n
            n = min(self._queued, self.spec.max_concurrency - len(live))
            self._queued -= n
        elif self.kind == "fixed":
            n = self._fixed - len(live)
        else:
            target = self._sizes[step]
            while len(live) > target:  # retire the most recently admitted extras
                slot, _ = live.popitem()
                self._release(slot)
                finished.append(slot)
            n = target - len(live)

        admitted = [self._admit(step) for _ in range(n)] if n > 0 else []
        self._finished = []
        self._step = step + 1
        return StepPlan(step, idle, finished, admitted, list(live))

    def _release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def _admit(self, step: int) -> Admit:
        slot = heapq.heappop(self._free) if self._free else self._take_fresh()
        rid = self._next_id
        self._next_id = rid + 1
        max_seq = self.spec.max_seq
        prompt = min(self._prompt(self._rng), max_seq // 2)
        output = min(self._output(self._rng), max_seq - prompt - 1)
        self._live[slot] = rid
        # Decodes steps step .. step+output-1; freed at the start of step+output.
        self._ends.setdefault(step + output, []).append((rid, slot))
        return Admit(rid, slot, prompt, output)

    def _take_fresh(self) -> int:
        slot = self._fresh
        self._fresh = slot + 1
        return slot
