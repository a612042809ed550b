"""Traces recorded on real GPUs, shipped with the package. Every command that reads a trace takes one as
``sample:NAME`` (``cgwatch samples`` lists them); ``cgwatch replay --sample [NAME]`` too."""

from __future__ import annotations

from cgwatch.errors import CgwatchError

SAMPLE = "llama1b_poisson_h100.jsonl"   # NVIDIA H100 80GB HBM3, llama-1b, Poisson traffic, 2026-11-27
PREFIX = "sample:"

# name -> what it is (one line each, for ``cgwatch samples``)
SAMPLES = {
    "llama1b_poisson_h100": "H100, llama-1b, Poisson traffic 4,000 steps: an eager window, a recapture to 11 sizes",
    "llama1b_live_h100": "H100, llama-1b, a client driving the daemon: eager, graph, recapture, padding, rate",
    "llama1b_fixed8_gap_h100": "H100, llama-1b, batch 8 in graph then eager mode: the GPU gap between steps",
    "bench_llama1b_h100": "H100, cgwatch bench of llama-1b at batch 1..64 (eager, graph, torch.compile)",
    "bench_tiny_h100": "H100, cgwatch bench of the tiny preset at batch 1..64 (eager, graph, torch.compile)",
    "vllm026_llama1b_poisson_h200": "H200, vLLM 0.26.0, llama-1b shapes, Poisson traffic with a toggle and a recapture",
    "bench_llama1b_fused_h200": "H200, cgwatch bench of llama-1b at batch 1..64 with the fused Triton kernels",
}


def sample_path(name: str = SAMPLE) -> str:
    """The bundled trace's path; ``name`` with or without ``.jsonl``. Unknown: a CgwatchError naming them all."""
    stem = name.removesuffix(".jsonl")
    if stem not in SAMPLES:
        raise CgwatchError(f"no bundled trace {name!r}; there are: {', '.join(SAMPLES)} (cgwatch samples)")
    from importlib import resources   # 0.02 s to import: only where a sample is named
    return str(resources.files(__package__) / f"{stem}.jsonl")


def resolve(path: str | None) -> str | None:
    """``sample:NAME`` to the bundled trace's path; anything else as it is."""
    if isinstance(path, str) and path.startswith(PREFIX):
        return sample_path(path[len(PREFIX):])
    return path


def listing() -> str:
    width = max(map(len, SAMPLES))
    lines = [f"  {PREFIX}{name:<{width}}  {what}" for name, what in SAMPLES.items()]
    return "\n".join(["bundled traces (any command that reads a trace takes sample:NAME):", *lines, "",
                      f"e.g. cgwatch report {PREFIX}{SAMPLE.removesuffix('.jsonl')}, "
                      "cgwatch replay --sample llama1b_live_h100"])
