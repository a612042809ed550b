"""Where tensor-parallel ranks are started, kept in step and stopped.

Rank 0 is the process that runs the engine's loop, the workload and the sinks. Ranks 1..N-1 are child
processes (``rank_command``: this module's ``_follower_main`` with RANK SIZE PORT, the config pickled
on stdin, importing the very cgwatch rank 0 runs) that run
the same Engine in a follower role (``Engine.follow``): they execute what rank 0 sends, so every rank
runs the same forwards, captures and releases in the same order.

Two process groups: the default one carries the model's all-reduces (NCCL on CUDA, gloo on the CPU);
``ctl``, a gloo group on the CPU, carries everything else:
- one ``all_gather`` of a small float64 vector per step (``exchange``): rank 0's part is the step
  plan (op, step, bucket, active slots, admitted slots and prompt lengths), a follower's part the
  step times it measured since the last exchange (rank 0 merges them into its step records);
- ``OP_START`` when rank 0's engine starts (captures), ``OP_STOP`` when it closes;
- ``OP_CMD`` then a broadcast of (name, value) for mode / recapture / padding;
- ``OP_CALL`` then a broadcast of (method, args): Engine.call_all, for the bench (prefill, save and
  restore the decode state, drain);
- per captured bucket, two ``all_gather_object`` (capture agreement, then the per-rank measures).
Every wait is bounded: a dead peer closes its sockets and gloo raises at once; a watchdog on rank 0
notices a rank process that exited while the main thread is blocked elsewhere (a GPU stuck in an
all-reduce); ``CTL_TIMEOUT_S`` bounds a rank that hangs alive; teardown joins with a timeout.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from cgwatch.errors import exit_text

OP_STEP, OP_CMD, OP_NOOP, OP_STOP, OP_CALL, OP_START = 1.0, 2.0, 3.0, 4.0, 5.0, 6.0
HEAD = 5                  # op, step, bucket (-1: eager), active count, admitted count
MEASURES = 16             # (step, ms) pairs a follower sends per exchange at most
CTL_TIMEOUT_S = 120.0     # a rank that hangs alive (its process still there)
START_TIMEOUT_S = 1800.0  # every rank loaded its model (llama-70b from scratch takes minutes)
WATCHDOG_S = 0.5          # how often rank 0 checks its rank processes
GRACE_S = 5.0             # after a rank died: time for the main thread to notice before the watchdog ends the run
TEARDOWN_S = 10.0         # per step of teardown (destroy, join), then terminate / kill
ERROR_KEY = "cgwatch/error/{}"
JOIN_KEY = "cgwatch/joining/{}"
EXIT_PEER_LOST = 3        # a rank > 0 ended because another rank was gone (not its own failure)

HARD_EXIT = False         # set when a rank was lost: the process ends with os._exit (NCCL may hang at exit)


class RankLost(Exception):
    """A rank died or stopped answering: the run ends on every rank. ``str()`` is the one-line reason."""


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def peer_gone(e: BaseException) -> bool:
    """Whether ``e`` is what a rank sees when another rank is gone: a lost rank, or a failed collective
    (torch.distributed's errors; gloo's are RuntimeErrors that name its transport)."""
    return isinstance(e, (RankLost, dist.DistError)) or "gloo/transport" in str(e) or "Connection reset" in str(e)


def vector_len(max_batch: int) -> int:
    return max(HEAD + 3 * max_batch, 1 + 2 * MEASURES)


def encode_plan(op: float, i: int, bucket: int | None, active: list[int], admitted: list[tuple[int, int]],
                length: int) -> torch.Tensor:
    v = np.zeros(length)
    n, m = len(active), len(admitted)
    v[:HEAD] = (op, i, -1 if bucket is None else bucket, n, m)
    v[HEAD:HEAD + n] = active
    if m:
        v[HEAD + n:HEAD + n + 2 * m] = [x for a in admitted for x in a]
    return torch.from_numpy(v)


def decode_plan(v: torch.Tensor) -> tuple[float, int, int | None, list[int], list[tuple[int, int]]]:
    a = v.numpy()
    op, i, bucket, n, m = a[:HEAD].tolist()
    n, m = int(n), int(m)
    rest = a[HEAD:HEAD + n + 2 * m].astype(np.int64).tolist()
    admitted = [(rest[n + 2 * k], rest[n + 2 * k + 1]) for k in range(m)]
    return op, int(i), None if bucket < 0 else int(bucket), rest[:n], admitted


def encode_measures(measures: list[tuple[int, float | None]], length: int) -> torch.Tensor:
    """A follower's part of an exchange: up to MEASURES (step, ms) pairs (NaN: not measured)."""
    v = torch.zeros(length, dtype=torch.float64)
    k = min(len(measures), MEASURES)
    v[0] = k
    for j, (i, ms) in enumerate(measures[:k]):
        v[1 + 2 * j] = i
        v[2 + 2 * j] = float("nan") if ms is None else ms
    return v


def decode_measures(v: torch.Tensor) -> list[tuple[int, float | None]]:
    k = int(v[0])
    vals = v[1:1 + 2 * k].tolist()
    return [(int(vals[2 * j]), None if vals[2 * j + 1] != vals[2 * j + 1] else vals[2 * j + 1]) for j in range(k)]


class Ranks:
    """This process's membership in the run: rank, size, the two groups, and (rank 0) the processes."""

    def __init__(self, rank: int, size: int, store, cuda: bool, procs: list | None = None,
                 on_stuck: Callable[[str], None] | None = None):
        self.rank, self.size, self.store, self.cuda = rank, size, store, cuda
        self.procs = procs or []             # rank 0: the processes of ranks 1..N-1
        self.lost: str | None = None         # why the run lost a rank
        self.stopped = False
        self.on_stuck = on_stuck             # rank 0: how the watchdog ends the run (the engine's)
        self._noticed = threading.Event()
        self._parent = os.getppid()
        timeout = timedelta(seconds=CTL_TIMEOUT_S)
        if dist.is_initialized():
            from cgwatch.errors import CgwatchError
            raise CgwatchError("this process already runs a tensor-parallel engine (one a process)")
        # the watchdogs first: a rank that dies before it joins leaves the others waiting in the rendezvous
        if rank == 0:
            threading.Thread(target=self._watch, name="cgwatch-ranks", daemon=True).start()
        else:
            threading.Thread(target=self._watch_parent, name="cgwatch-parent", daemon=True).start()
        try:
            self._rendezvous()
            dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=size,
                                    timeout=timeout)
            self.group = dist.group.WORLD          # the model's all-reduces
            self.ctl = dist.new_group(backend="gloo", timeout=timeout)
        except Exception as e:
            self._noticed.set()                    # this thread ends the run: the watchdog stands down
            self.stopped = True
            if isinstance(e, RankLost):
                raise
            raise RankLost(self._wait_dead(3.0) or f"rank {rank}: joining the other ranks failed "
                           f"({one_line(e)})") from None

    def _rendezvous(self) -> None:
        """Every rank says it is about to join; rank 0 waits for them all here, where a rank that dies is
        seen at once (init_process_group waits for them holding the GIL: no watchdog runs then)."""
        if self.rank:
            self.store.set(JOIN_KEY.format(self.rank), "1")
            return
        keys = [JOIN_KEY.format(r) for r in range(1, self.size)]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.store.check(keys):
            reason = self._dead_rank()
            if reason is not None:
                self.lost = reason
                raise RankLost(reason)
            if time.monotonic() > deadline:
                raise RankLost(f"ranks did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    # -- collectives on ctl (every wait raises RankLost, never hangs) -----------------------
    def _guard(self, fn, *args, **kw):
        if self.lost:
            raise RankLost(self.lost)
        try:
            return fn(*args, **kw)
        except Exception as e:
            raise RankLost(self._reason(e)) from None

    def ready(self) -> None:
        """After every rank loaded its model (a monitored barrier: a rank that failed is named)."""
        self._guard(dist.monitored_barrier, group=self.ctl, timeout=timedelta(seconds=START_TIMEOUT_S),
                    wait_all_ranks=True)

    def exchange(self, vec: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(vec) for _ in range(self.size)]
        self._guard(dist.all_gather, out, vec, group=self.ctl)
        return out

    def broadcast(self, obj=None):
        box = [obj]
        self._guard(dist.broadcast_object_list, box, src=0, group=self.ctl)
        return box[0]

    def all_gather(self, obj) -> list:
        out = [None] * self.size
        self._guard(dist.all_gather_object, out, obj, group=self.ctl)
        return out

    # -- capture agreement (GraphManager calls these on every rank, bucket by bucket) -------
    def settle_capture(self, ok: bool, cause: str | None, hint: str | None, error: str | None):
        """Every rank's verdict on one bucket; returns (the first failing rank or None, its cause,
        hint, error). A bucket that failed anywhere is disabled everywhere."""
        votes = self.all_gather((ok, cause, hint, error))
        for r, (ok_r, cause_r, hint_r, error_r) in enumerate(votes):
            if not ok_r:
                return r, cause_r, hint_r, error_r
        return None, None, None, None

    # -- liveness --------------------------------------------------------------------------
    def check_failure(self, e: BaseException) -> None:
        """After ``e`` in this rank's own work (the model's all-reduces among it): raise RankLost if a
        rank is gone, so the run ends with that reason; else the caller re-raises ``e``."""
        if self.lost or self._wait_dead(2.0 if isinstance(e, dist.DistError) or "gloo" in str(e) else 0.0):
            self._noticed.set()
            raise RankLost(self.lost) from None

    def _wait_dead(self, wait_s: float) -> str | None:
        deadline = time.monotonic() + wait_s
        while True:
            reason = self._dead_rank()
            if reason is not None or time.monotonic() >= deadline:
                if reason is not None:
                    self.lost = self.lost or reason
                return reason
            time.sleep(0.05)

    def _reason(self, e: BaseException) -> str:
        """The one-line reason a collective failed: a rank's own report, its exit, or the error."""
        self._noticed.set()
        if self.lost:
            return self.lost
        reason = self._wait_dead(3.0)          # a dying peer: give its process time to exit and report
        self.lost = reason or f"rank {self.rank}: a collective with the other ranks failed ({one_line(e)})"
        return self.lost

    def _dead_rank(self) -> str | None:
        """Why a rank is gone, or None. A rank that ended because a peer was gone (EXIT_PEER_LOST) is
        named only if no other rank ended: the others' reason is the cause."""
        gone = [(r, code) for r, p in enumerate(self.procs, start=1) if (code := p.poll()) is not None]
        first = [(r, code) for r, code in gone if code != EXIT_PEER_LOST] or gone
        if first:
            r, code = first[0]
            return f"rank {r} {self._stored_error(r) or _exit_text(code)}"
        if self.rank != 0 and os.getppid() != self._parent:
            return "rank 0 exited"
        return None

    def _stored_error(self, r: int) -> str | None:
        try:
            if self.store.check([ERROR_KEY.format(r)]):
                return "failed: " + self.store.get(ERROR_KEY.format(r)).decode(errors="replace")
        except Exception:
            pass
        return None

    def _watch(self) -> None:
        while not self.stopped:
            time.sleep(WATCHDOG_S)
            if self.stopped:
                return
            reason = self._dead_rank()
            if reason is None:
                continue
            self.lost = self.lost or reason
            if self._noticed.wait(GRACE_S) or self.stopped:
                return                      # the main thread saw it and ends the run itself
            if self.on_stuck is not None:   # the main thread is blocked (a GPU waiting in an all-reduce)
                for p in self.procs:        # the other ranks may be blocked too: end them first
                    if p.poll() is None:
                        p.kill()
                self.on_stuck(self.lost)
            return

    def _watch_parent(self) -> None:
        while True:
            time.sleep(WATCHDOG_S)
            if os.getppid() != self._parent:
                os._exit(1)                 # rank 0 is gone: nobody will tell this rank to stop

    # -- teardown --------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Leave the groups and (rank 0) end the rank processes, each wait bounded."""
        global HARD_EXIT
        self.stopped = True
        self._noticed.set()
        if self.lost:
            HARD_EXIT = True                # the process should end at once (the CLI does)
            if not self.cuda:               # gloo leaves at once; NCCL's destroy can hang on a lost peer
                _bounded(dist.destroy_process_group, TEARDOWN_S)
        elif not _bounded(dist.destroy_process_group, TEARDOWN_S):
            HARD_EXIT = True                # it hung (facts.md saw that): the interpreter's exit might too
        # the ranks end by themselves (told to stop, or seeing a peer gone); those still there at one shared
        # deadline are killed (SIGTERM would only start a rank's own grace: _stop_soon)
        deadline = time.monotonic() + (2.0 if self.lost else TEARDOWN_S)
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _bounded(fn, timeout_s: float) -> bool:
    """Run ``fn`` on a daemon thread; give up waiting after ``timeout_s`` (True if it returned)."""
    t = threading.Thread(target=lambda: _quiet(fn), daemon=True)
    t.start()
    t.join(timeout_s)
    return not t.is_alive()


def _quiet(fn) -> None:
    try:
        fn()
    except Exception:
        pass


def _exit_text(code: int) -> str:
    return "lost the other ranks" if code == EXIT_PEER_LOST else exit_text(code)


def rank_env() -> dict:
    """The rank processes' environment: NVLink multicast off unless the user chose (facts.md)."""
    env = dict(os.environ)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    return env


def rank_command(rank: int, size: int, port: int) -> list[str]:
    """A rank process that imports the very cgwatch this process runs (not ``python -m``, which would
    import a ``cgwatch/`` folder in the working directory first: cli.daemon_child_command)."""
    where = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = ("import sys; sys.path[0] = sys.argv.pop(1); from cgwatch.engine.ranks import _follower_main; "
            "_follower_main(sys.argv[1:])")
    return [sys.executable, "-c", boot, where, str(rank), str(size), str(port)]


def start(cfg, size: int, cuda: bool, on_stuck: Callable[[str], None] | None = None) -> Ranks:
    """Rank 0: start ranks 1..size-1 and join the groups with them (``on_stuck``: Ranks.on_stuck, set before
    the rendezvous, so a rank that dies while the ranks start ends the run too)."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    store = dist.TCPStore("127.0.0.1", 0, size, True, timeout=timedelta(seconds=START_TIMEOUT_S),
                          wait_for_workers=False)
    payload = pickle.dumps(cfg)
    procs = []
    try:
        for r in range(1, size):
            p = subprocess.Popen(rank_command(r, size, store.port), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 env=rank_env())
            procs.append(p)
            p.stdin.write(payload)
            p.stdin.close()
        return Ranks(0, size, store, cuda, procs, on_stuck)
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise


def join(rank: int, size: int, store, cuda: bool) -> Ranks:
    return Ranks(rank, size, store, cuda)


FOLLOWER_STOP_GRACE_S = 10.0   # a rank > 0 sent SIGTERM / SIGHUP: how long rank 0 has to end the run first


def _stop_soon(sig: int, _frame) -> None:
    """SIGTERM or SIGHUP at a rank > 0. One sent to the whole group (``timeout``, a systemd stop, a closed
    terminal) reaches rank 0 too, which ends the run on every rank as it ends one rank's run (outcome
    "interrupted"); one sent to this rank alone ends it after FOLLOWER_STOP_GRACE_S, by that signal, and rank 0
    names it. A second one ends it at once."""
    signal.signal(sig, signal.SIG_DFL)

    def later() -> None:
        time.sleep(FOLLOWER_STOP_GRACE_S)
        os.kill(os.getpid(), sig)
    threading.Thread(target=later, name="cgwatch-stop-grace", daemon=True).start()


def _follower_main(argv: list[str]) -> None:
    """A rank > 0: build the engine as a follower and run what rank 0 sends until it says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: rank 0 decides
    for sig in (signal.SIGTERM, signal.SIGHUP):    # a stop sent to the group: rank 0 decides too, within a grace
        signal.signal(sig, _stop_soon)
    rank, size, port = int(argv[0]), int(argv[1]), int(argv[2])
    cfg = pickle.loads(sys.stdin.buffer.read())
    store = None
    code = 0
    try:
        store = dist.TCPStore("127.0.0.1", port, size, False, timeout=timedelta(seconds=START_TIMEOUT_S))
        from cgwatch.engine.loop import Engine
        engine = Engine(cfg, None, rank=rank, store=store)
        engine.follow()
    except BaseException as e:
        if peer_gone(e):   # another rank is gone: rank 0 names it (this rank's own line would be noise)
            code = EXIT_PEER_LOST
            if os.environ.get("CGWATCH_DEBUG"):
                print(f"cgwatch rank {rank}: {one_line(e)}", file=sys.stderr, flush=True)
        else:
            reason, told = one_line(e), False
            try:
                store.set(ERROR_KEY.format(rank), reason)   # rank 0 names it in its one line (Ranks._dead_rank)
                told = True
            except Exception:
                pass
            if not told or os.environ.get("CGWATCH_DEBUG"):   # else a second line, often the same as rank 0's
                print(f"cgwatch rank {rank}: {reason}", file=sys.stderr, flush=True)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)                                 # no interpreter teardown: NCCL may hang in it


