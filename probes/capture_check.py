"""Probe: `cgwatch check` as a standalone script -- capture a callable in a CUDA graph, say why it fails and
where, or replay it against eager (on a machine without CUDA: the capture lint only).

    python3 probes/capture_check.py tests/check_cases.py:uses_item --example-inputs "f32[4,8]" --json check.json

Arguments as `cgwatch check` (see `cgwatch check --help` for the SPEC grammar), except that --json takes a
PATH to write the report to; the human report is printed either way. Exit code: 0 ok, 1 fails, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from cgwatch import check
from cgwatch.errors import CgwatchError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=check.SPEC_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_arguments(p, "also write the report as JSON to PATH", json_path=True)
    a = p.parse_args(argv)
    try:
        res = check.check(a.target, a.example_inputs, device=a.device, replays=a.replays)
    except CgwatchError as e:
        print(f"capture_check: {e}", file=sys.stderr)
        return 2
    print(check.format_report(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
