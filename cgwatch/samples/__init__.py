"""Traces recorded on real GPUs, shipped with the package (``cgwatch replay --sample``)."""

from importlib import resources

SAMPLE = "llama1b_poisson_h100.jsonl"   # NVIDIA H100 80GB HBM3, llama-1b, Poisson traffic, 2026-11-27


def sample_path(name: str = SAMPLE) -> str:
    return str(resources.files(__package__) / name)
