"""An SVG screenshot of the TUI replaying a trace at a given trace time (for docs/ and the README).

    python3 probes/screenshot.py sample_traces/llama1b_live_h100.jsonl --at 31 --out docs/tui_replay_live_h100.svg
    python3 probes/screenshot.py sample_traces/llama1b_live_h100.jsonl --at 31 --out /tmp/e.svg --size 80x24 --keys tab,tab
    python3 probes/screenshot.py tp2.jsonl --at 20 --keys G --size 80x24 --out /tmp/gpus.svg   # the per-GPU view
"""

from __future__ import annotations

import argparse
import asyncio

from cgwatch.replay import ReplaySource
from cgwatch.tui.app import CgwatchApp


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def shoot(trace: str, at: float, out: str, size: tuple[int, int], keys: list[str] = ()) -> None:
    clock = _Clock()
    src = ReplaySource(trace, clock=clock, start_paused=True)
    app = CgwatchApp(src)
    async with app.run_test(size=size) as pilot:
        src.send("seek", at)
        app.flush()
        await pilot.pause()
        if keys:
            await pilot.press(*keys)
            await pilot.pause()
        app.save_screenshot(filename=out.rsplit("/", 1)[-1], path=out.rsplit("/", 1)[0] or ".")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--at", type=float, default=30.0, help="trace time in seconds")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="140x45")
    ap.add_argument("--keys", default="", help="keys to press first, comma-separated (e.g. tab,tab)")
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    asyncio.run(shoot(a.trace, a.at, a.out, (w, h), [k for k in a.keys.split(",") if k]))
    print(a.out)


if __name__ == "__main__":
    main()
