"""Where the vLLM backend's model comes from: a Hugging Face id, a local folder, or a cgwatch preset.

* A cgwatch preset (``tiny``, ``llama-1b``, ``llama-8b``) becomes a folder holding just its
  ``config.json`` (the same shapes as cgwatch's own engine, engine/load.py ``hf_config``), under
  ``$CGWATCH_CACHE`` (default ``~/.cache/cgwatch``)/vllm-models/NAME, loaded with vLLM's
  ``load_format="dummy"`` (random weights, no download): vLLM and cgwatch's engine then run the same
  shapes, side by side.
* A local folder must hold ``config.json``; without weight files (``*.safetensors``, ``*.bin``,
  ``*.pt``) it needs ``--load-format dummy``.
* Anything else is passed to vLLM as it is (a Hugging Face id; vLLM downloads it, or fails in one line).
Pure (no vllm import): checked before vLLM's slow start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cgwatch.errors import CgwatchError

DUMMY = "dummy"
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class VllmModel:
    path: str                 # what vLLM's ``model`` gets
    load_format: str | None   # None: vLLM's default ("auto")
    source: str               # for the header: "preset (random weights)", "local folder", "hub"
    note: str | None = None   # one line for the log, or None


def cache_dir() -> Path:
    return Path(os.environ.get("CGWATCH_CACHE") or Path.home() / ".cache" / "cgwatch")


def preset_folder(name: str) -> Path:
    """The config-only folder of a cgwatch preset (written once; rewritten if the shapes changed)."""
    from cgwatch.engine.load import hf_config
    from cgwatch.engine.model import PRESETS

    folder = cache_dir() / "vllm-models" / name
    text = json.dumps(hf_config(PRESETS[name]), indent=1, sort_keys=True)
    cfg = folder / "config.json"
    try:
        if not cfg.is_file() or cfg.read_text() != text:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = cfg.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(cfg)
    except OSError as e:
        raise CgwatchError(f"cannot write the {name} preset's config.json under {folder} ({e.strerror}): "
                           f"set CGWATCH_CACHE to a writable folder") from None
    return folder


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.exists(model)


def resolve_model(model: str, load_format: str | None) -> VllmModel:
    """What to hand vLLM for ``--model`` and ``--load-format``; a CgwatchError for what cannot work."""
    from cgwatch.engine.model import PRESETS

    if model in PRESETS and not os.path.exists(model):
        if load_format not in (None, DUMMY):
            raise CgwatchError(f"--model {model} is a cgwatch preset (random weights): it needs --load-format "
                               f"dummy, not {load_format!r}")
        note = None if load_format == DUMMY else f"preset {model}: vLLM loads it with --load-format dummy (random weights)"
        return VllmModel(str(preset_folder(model)), DUMMY, "preset (random weights)", note)
    if _looks_like_path(model):
        folder = Path(model).expanduser()
        if not folder.exists():
            raise CgwatchError(f"model folder {model} does not exist")
        if not folder.is_dir():
            raise CgwatchError(f"--model {model} is a file: give the folder that holds config.json")
        if not (folder / "config.json").is_file():
            raise CgwatchError(f"model folder {model} has no config.json")
        try:
            json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise CgwatchError(f"{folder / 'config.json'}: not readable JSON ({e})") from None
        has_weights = any(next(folder.glob(g), None) for g in WEIGHT_GLOBS)
        if not has_weights and load_format != DUMMY:
            raise CgwatchError(f"model folder {model} has config.json but no weights (*.safetensors, *.bin): "
                               f"add --load-format dummy for random weights")
        return VllmModel(str(folder.resolve()), load_format, "local folder")
    return VllmModel(model, load_format, "hub")
