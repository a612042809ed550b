"""Bring a vLLM release's wheels to the GPU machine, which has no network and takes at most 64 MiB
(working tree included) per call; what a call leaves in /tmp stays while the machine is warm (30 s
after a call).

Here (a machine with PyPI), once:
    pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whlv -r <(cut -f1 TSV)
    python3 probes/vllm_wheels.py pack ../shared/docs/vllm026-wheels.tsv .whlv .vstash --extra .whl
This checks every wheel the list names (name and bytes), splits the ones over the piece size into
parts, and packs everything into folders .vstash/00, .vstash/01, ... of at most --max-mib each.

There, one call per folder, each within 30 s of the last (device `run`, carry ['.vstash/NN']):
    python3 probes/vllm_wheels.py receive .vstash/NN /tmp/stash
and after the last one:
    python3 probes/vllm_wheels.py install /tmp/stash /tmp/site && export PYTHONPATH=/tmp/site:$PWD
which joins the parts, checks every file against the manifest and installs with
``pip install --no-index --no-deps --target``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20
MANIFEST = "manifest.json"


def read_tsv(path: Path) -> list[tuple[str, str, int]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].isdigit():
            sys.exit(f"vllm_wheels: {path}:{n}: expected 'name==version<TAB>file<TAB>bytes'")
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def pack(tsv: Path, wheels: Path, out: Path, max_mib: float, extra: list[Path]) -> None:
    files: list[tuple[Path, int]] = []
    missing = []
    for req, name, size in read_tsv(tsv):
        p = wheels / name
        if p.is_file() and p.stat().st_size == size:
            files.append((p, size))
            continue
        # pip may pick another build of the same release (other platform tags): take it, by name and version
        dist, _, version = req.partition("==")
        other = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
        if len(other) == 1:
            files.append((other[0], other[0].stat().st_size))
        else:
            missing.append(f"{req} ({name}, {size} bytes)")
    if missing:
        sys.exit("vllm_wheels: missing or of another size: " + "; ".join(missing[:5]) +
                 (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for d in extra:
        files += [(p, p.stat().st_size) for p in sorted(d.glob("*.whl"))]
    limit = int(max_mib * MIB)
    pieces: list[tuple[str, Path, int, int]] = []   # (piece name, source, offset, length)
    manifest: dict[str, dict] = {}
    for p, size in files:
        if size <= limit:
            pieces.append((p.name, p, 0, size))
            manifest[p.name] = {"bytes": size, "parts": [p.name]}
            continue
        names = []
        for k, off in enumerate(range(0, size, limit)):
            names.append(f"{p.name}.part{k:03d}")
            pieces.append((names[-1], p, off, min(limit, size - off)))
        manifest[p.name] = {"bytes": size, "parts": names}
    # first-fit decreasing into folders of <= limit bytes
    bins: list[list] = []
    for piece in sorted(pieces, key=lambda x: -x[3]):
        for b in bins:
            if b[0] + piece[3] <= limit:
                b[0] += piece[3]
                b[1].append(piece)
                break
        else:
            bins.append([piece[3], [piece]])
    if out.exists():
        shutil.rmtree(out)
    for k, (_, items) in enumerate(bins):
        d = out / f"{k:02d}"
        d.mkdir(parents=True)
        for name, src, off, length in items:
            with open(src, "rb") as f, open(d / name, "wb") as g:
                f.seek(off)
                g.write(f.read(length))
    (out / "00" / MANIFEST).write_text(json.dumps(manifest, indent=0))
    for k, (used, items) in enumerate(bins):
        print(f"{out}/{k:02d}: {len(items)} files, {used / MIB:.1f} MiB")
    print(f"{len(files)} wheels, {sum(s for _, s in files) / MIB:.0f} MiB in {len(bins)} folders")


def receive(src: Path, stash: Path) -> None:
    stash.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in src.iterdir():
        shutil.copyfile(p, stash / p.name)
        n += 1
    total = sum(p.stat().st_size for p in stash.iterdir())
    print(f"received {n} files from {src}; {stash} holds {len(list(stash.iterdir()))} files, {total / MIB:.0f} MiB")


def install(stash: Path, site: Path) -> None:
    mf = stash / MANIFEST
    if not mf.is_file():
        sys.exit(f"vllm_wheels: no {MANIFEST} in {stash}: folder 00 has not arrived")
    manifest = json.loads(mf.read_text())
    wheels, missing = [], []
    for name, info in manifest.items():
        parts = [stash / q for q in info["parts"]]
        if len(parts) > 1 and all(q.is_file() for q in parts):
            with open(stash / name, "wb") as g:
                for q in parts:
                    g.write(q.read_bytes())
                    q.unlink()
        p = stash / name
        if not p.is_file() or p.stat().st_size != info["bytes"]:
            missing.append(name)
        else:
            wheels.append(str(p))
    if missing:
        sys.exit(f"vllm_wheels: {len(missing)} wheel(s) missing or incomplete, e.g. {missing[:3]}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *wheels]
    rc = subprocess.call(cmd)
    if rc:
        sys.exit(f"vllm_wheels: pip install failed (rc {rc})")
    print(f"installed {len(wheels)} wheels into {site}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("tsv", type=Path)
    p.add_argument("wheels", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--max-mib", type=float, default=56.0, help="folder size (the call's 64 MiB less the tree)")
    p.add_argument("--extra", type=Path, action="append", default=[], help="also pack this folder's wheels")
    r = sub.add_parser("receive")
    r.add_argument("src", type=Path)
    r.add_argument("stash", type=Path)
    i = sub.add_parser("install")
    i.add_argument("stash", type=Path)
    i.add_argument("site", type=Path)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.tsv, a.wheels, a.out, a.max_mib, a.extra)
    elif a.cmd == "receive":
        receive(a.src, a.stash)
    else:
        install(a.stash, a.site)


if __name__ == "__main__":
    main()
