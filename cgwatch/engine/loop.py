"""The engine: the decode loop that ties workload, model, graphs and measurements together and emits
records (records.py) to its sinks. It never imports a view.

One ``step()``: apply pending commands, ask the workload who is live, prefill newcomers (eager), pick
the bucket (buckets.py), run the step (graph replay or eager), hand the step record to the GPU timer,
and emit the records whose GPU time is known.

Tensor parallelism (``tensor_parallel_size`` N > 1): this process is rank 0 and starts ranks
1..N-1 (engine/ranks.py), each an Engine built from the same config that ``follow()``s: rank 0 sends
every step's plan and every mode / recapture / padding command, and every rank runs them through the
same ``_run_step`` / ``_cmd_*`` / ``_capture`` code below. Only rank 0 has a workload and sinks;
the others' step times reach rank 0's step records through rank_merge.py.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from cgwatch import cores
from cgwatch import records as R
from cgwatch.engine import kernels as K
from cgwatch.engine import ranks as RK
from cgwatch.engine.base import EngineBase
from cgwatch.engine.buckets import DEFAULT_CAPTURE_SIZES, Dispatch, DispatchTable, check_ratio, effective_sizes
from cgwatch.engine.control import KV_SLOTS, Command, CommandTaker, Limits
from cgwatch.engine.graphs import BucketGraph, GraphManager
from cgwatch.engine.load import check_window, load_model, model_args
from cgwatch.engine.rank_merge import RankMerge
from cgwatch.engine.tensor_parallel import check_shapes
from cgwatch.engine.step import STAGING_BUFFERS, DecodeState
from cgwatch.errors import CgwatchError
from cgwatch.measure.gpu_timer import StepTimer
from cgwatch.measure.host import HostStats
from cgwatch.measure.nvml import Nvml
from cgwatch.measure.sampler import Sampler
from cgwatch.nvtx_ranges import Nvtx, step_range_name
from cgwatch.workload import Workload, WorkloadSpec


@dataclass
class EngineConfig:
    model: str = "tiny"
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                   # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    max_seq: int = 1024
    capture_sizes: tuple[int, ...] = DEFAULT_CAPTURE_SIZES
    max_capture_size: int | None = None
    max_padding_ratio: float = 0.5
    mode: str = "graph"                   # graph | eager
    kernels: str = "auto"                 # auto (fused where CUDA and Triton are) | fused | plain
    pool: str = "shared"                  # shared | private (one pool per graph, for comparison)
    temperature: float = 0.0
    seed: int = 0
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    schedule: tuple[tuple[int, Command], ...] = ()   # (step, command): --at
    profile_steps: tuple[int, int] | None = None     # cudaProfilerStart/Stop around these steps
    fail_capture: tuple[int, ...] = ()               # fault injection: these buckets' captures fail
    fail_capture_on: tuple[tuple[int, int], ...] = ()  # (bucket, rank): ... on that rank only
    tensor_parallel_size: int = 1                    # ranks, one process and one GPU each
    nvtx: bool = True
    sample_interval_s: float = 0.25
    max_inflight: int = 2
    threads: int | None = None                       # CPU threads (torch.set_num_threads); None: cpu_threads()

    def describe(self) -> dict:
        d = asdict(self)
        d["workload"] = asdict(self.workload)
        d["schedule"] = [[s, c.name, c.value] for s, c in self.schedule]
        return d


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str, rank: int = 0, tp_size: int = 1) -> torch.device:
    if tp_size > 1:   # one GPU a rank: rank r on cuda:r (CUDA_VISIBLE_DEVICES picks which)
        if name not in ("auto", "cpu", "cuda"):
            raise CgwatchError(f"--device {name} with --tensor-parallel-size {tp_size}: use auto, cuda or cpu "
                               "(rank r runs on cuda:r; pick the GPUs with CUDA_VISIBLE_DEVICES)")
        if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise CgwatchError("--device cuda: no CUDA device is available")
            if torch.cuda.device_count() < tp_size:
                raise CgwatchError(f"--tensor-parallel-size {tp_size}: only {torch.cuda.device_count()} "
                                   "CUDA device(s) here")
            return torch.device("cuda", rank)
        return torch.device("cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CgwatchError(f"bad --device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CgwatchError("--device cuda: no CUDA device is available (torch "
                               f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise CgwatchError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise CgwatchError(f"bad --device {name!r}: expected auto, cpu, cuda or cuda:N")
    return dev


STARTING = "the tensor-parallel ranks did not start"   # a rank lost before the run began
MAX_AUTO_THREADS = 8   # small decode batches gain nothing from more


def check_cache_fits(need: int, device: torch.device, slots: int, max_seq: int) -> None:
    """A KV cache larger than the memory free for it is a one-line error before it is allocated (on the CPU the
    kernel's OOM killer would end the process without a word)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil
        free = psutil.virtual_memory().available
    if need > free:
        gib = 1 << 30
        raise CgwatchError(f"the KV cache for {slots} slots x {max_seq} positions needs {need / gib:,.1f} GiB, more "
                           f"than the {free / gib:,.1f} GiB free on {device}: lower --max-concurrency or --max-seq "
                           f"(the bench: --batch-sizes or --max-seq)")


def cpu_threads(explicit: int | None = None, env: dict | None = None) -> tuple[int, str]:
    """How many threads torch may use for the model on the CPU, and why: ``explicit`` (--threads),
    else $OMP_NUM_THREADS if it is a positive integer, else the physical cores this process may run
    on less one (left to the sampler, the daemon's socket threads and a TUI), at least 1, at most
    MAX_AUTO_THREADS. torch's default, every logical core, makes the model's threads and the others
    preempt each other: on a busy 2-core VM a 20-step run took 25 s instead of 1.5 s (BENCHMARKS.md)."""
    if explicit is not None:
        return explicit, "--threads"
    env = os.environ if env is None else env
    omp = str(env.get("OMP_NUM_THREADS", "")).strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    usable = cores.usable()
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or usable
    except Exception:
        physical = usable
    return max(1, min(min(physical, usable) - 1, MAX_AUTO_THREADS)), "auto"


class Engine(EngineBase):
    backend = "pytorch"

    def __init__(self, cfg: EngineConfig, emit: Callable[[dict], None] | None, rank: int = 0, store=None):
        """Rank 0 (the default) emits records to ``emit``; a rank > 0 (started by engine/ranks.py with
        the run's ``store``) keeps only its step times, for rank 0."""
        self.cfg, self.rank, self.tp = cfg, rank, cfg.tensor_parallel_size
        self.emit = emit if rank == 0 else self._keep_measure
        self.measures: list[tuple[int, float | None]] = []   # rank > 0: (step, ms) not yet sent
        self.ranks = self.merge = None
        self._midway = False   # rank 0 is between sending the other ranks work and finishing its own part
        self.on_abort: Callable[[dict], None] | None = None  # rank 0: ends the trace if the watchdog must
        if cfg.mode not in ("graph", "eager"):
            raise CgwatchError(f"--mode must be graph or eager, got {cfg.mode!r}")
        if cfg.dtype != "auto" and cfg.dtype not in _DTYPES:
            raise CgwatchError(f"--dtype must be auto, {', '.join(_DTYPES)}; got {cfg.dtype!r}")
        check_ratio(cfg.max_padding_ratio)
        if not 1 <= cfg.max_inflight < STAGING_BUFFERS - 1:
            raise CgwatchError(f"max_inflight must be 1..{STAGING_BUFFERS - 2}")
        if cfg.max_seq < 8:
            raise CgwatchError(f"--max-seq must be >= 8, got {cfg.max_seq}")
        args = model_args(cfg.model)   # a checkpoint's config read once, before anything loads
        check_window(args, cfg.max_seq, cfg.model)
        if self.tp > 1:
            check_shapes(args, self.tp, cfg.model)
            bad = [r for _, r in cfg.fail_capture_on if not 0 <= r < self.tp]
            if bad:
                raise CgwatchError(f"--fail-capture-bucket: rank {bad[0]} is not a rank of "
                                   f"--tensor-parallel-size {self.tp}")
        self.device = resolve_device(cfg.device, rank, self.tp)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.set_device(self.device)
        if cfg.threads is not None and cfg.threads < 1:
            raise CgwatchError(f"--threads must be >= 1, got {cfg.threads}")
        self.threads, self.threads_by = None, None
        if not self.cuda or cfg.threads is not None:
            self.threads, self.threads_by = cpu_threads(cfg.threads)
            if self.tp > 1 and not self.cuda and cfg.threads is None:   # the ranks share the cores
                self.threads, self.threads_by = max(1, self.threads // self.tp), f"{self.threads_by} / {self.tp} ranks"
            torch.set_num_threads(self.threads)
        self.dtype = _DTYPES.get(cfg.dtype) or (torch.bfloat16 if self.cuda else torch.float32)
        self.workload = Workload(cfg.workload)
        self.max_batch = cfg.workload.max_concurrency
        self.t0 = time.perf_counter()
        try:
            if self.tp > 1:   # start (rank 0) or join the other ranks before the slow part, the model load
                self.ranks = (RK.start(cfg, self.tp, self.cuda, self._abort_stuck) if rank == 0
                              else RK.join(rank, self.tp, store, self.cuda))
            self._build(cfg)
        except BaseException as e:
            if self.ranks is not None and rank == 0:
                self.ranks.lost = self.ranks.lost or "rank 0 failed to start"
                self.ranks.shutdown()
            if isinstance(e, RK.RankLost) and rank == 0:   # a rank died while the ranks started: one line
                raise CgwatchError(f"{STARTING}: {e}") from e
            raise

    def _build(self, cfg: EngineConfig) -> None:
        rank = self.rank
        self.model, self.model_info = load_model(cfg.model, self.device, self.dtype, cfg.seed, rank, self.tp)
        if self.ranks is not None:
            self.model.set_group(self.ranks.group)
        self.kernels, self.kernels_why = K.choose(cfg.kernels, self.device, self.dtype)
        self.model.kernels = self.kernels
        check_cache_fits(self.model.cache_bytes(self.max_batch, cfg.max_seq), self.device, self.max_batch, cfg.max_seq)
        self.model.setup_caches(self.max_batch, cfg.max_seq)
        self.state = DecodeState(self.model, self.max_batch, cfg.temperature, cfg.seed)
        self.nvml = Nvml(self.device if self.cuda else None)
        self.rank_nvml = [Nvml(torch.device("cuda", r)) if self.cuda else Nvml(None) for r in range(self.tp)] \
            if self.tp > 1 and rank == 0 else []
        self.nvtx = Nvtx(cfg.nvtx)
        self.timer = StepTimer(self.device, cfg.max_inflight)
        fails = tuple(cfg.fail_capture) + tuple(b for b, r in cfg.fail_capture_on if r == rank)
        self.graphs = GraphManager(self.state, self.nvml, self.nvtx, cfg.pool, fails, self.ranks) if self.cuda else None
        self.sampler = Sampler(self.nvml, HostStats(self.device), self._busy_ms, self.now, self.emit,
                               cfg.sample_interval_s, self.rank_nvml)
        if self.ranks is not None:
            self.ranks.ready()                      # every rank loaded its shard
            self.plan_len = RK.vector_len(self.max_batch)
            if rank == 0:
                self.merge = RankMerge(self.tp, self.emit, self.now)
        self.graph_mode = cfg.mode == "graph"
        self.max_padding_ratio = cfg.max_padding_ratio
        self.sizes, self.dropped_sizes = effective_sizes(cfg.capture_sizes, cfg.max_capture_size, self.max_batch)
        self.table = self._table()
        self._init_commands(cfg.schedule)
        self.i = 0
        self.tokens = 0
        self.started = False
        self.paused = False

    # -- helpers ---------------------------------------------------------------------------------
    def _busy_ms(self) -> float | None:
        return self.timer.busy_ms if self.cuda else None

    def _table(self) -> DispatchTable:
        failed = self.graphs.failed_sizes() if self.graphs else ()
        sizes = (self.graphs.ok_sizes() + list(failed)) if (self.graphs and self.graphs.graphs) else self.sizes
        return DispatchTable(self.max_batch, sizes, failed, self.max_padding_ratio, self.graph_mode, self.cuda)

    def header(self) -> dict:
        tp = {}
        if self.tp > 1:
            tp = {"tensor_parallel_size": self.tp, "ranks": [
                {"rank": r, "device": str(torch.device("cuda", r)) if self.cuda else "cpu",
                 "gpu": (n.static_info()["gpu_name"] or (torch.cuda.get_device_name(r) if self.cuda else "cpu")),
                 "pid": os.getpid() if r == 0 else self.ranks.procs[r - 1].pid} for r, n in enumerate(self.rank_nvml)]}
        return (tp | self._header_run(str(self.dtype).removeprefix("torch."), "cpu")
                | self._header_plan(self.model_info, self.cfg.describe(),
                                    kernels=self.kernels, kernels_why=self.kernels_why)
                | {"cpu_threads": torch.get_num_threads(), "cpu_threads_by": self.threads_by or "torch default",
                   "nvtx": self.nvtx.available, "nvml": self.nvml.available})

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Capture graphs (graph mode on CUDA) and start the sampler. Call once, after the header is out."""
        self.started = True
        if self.ranks is not None and self.rank == 0:
            self._midway = True       # (_together: cleared once the capture round is done)
            self._send(RK.OP_START)   # the other ranks start (and capture) with this one
        self.t0 = time.perf_counter()   # t = 0 is the start of the run, after the model loaded
        if self.dropped_sizes:
            self.emit(R.event(R.EV_INFO, self.now(), message=f"capture sizes {self.dropped_sizes} dropped: above "
                              f"max capture size / --max-concurrency {self.max_batch}"))
        if self.cuda and self.kernels_why:   # on a GPU, plain kernels by default is news
            self.emit(R.event(R.EV_INFO, self.now(), message=f"plain PyTorch kernels: {self.kernels_why}"))
        self._note_fail_capture()
        if not self.cuda:
            if self.graph_mode:
                self.emit(R.alert(self.now(), "CUDA graphs need CUDA: no GPU here, running eager on the CPU",
                                  level="info"))
        elif self.graph_mode:
            self._capture(self.sizes)
        self._emit_state()
        self._midway = False
        if self.rank == 0:
            self.sampler.start()

    def _note_fail_capture(self) -> None:
        """--fail-capture-bucket that cannot act now: no graphs without CUDA, or a size not in the list."""
        asked = set(self.cfg.fail_capture) | {b for b, _ in self.cfg.fail_capture_on}
        missing = sorted(asked - set(self.sizes))
        if not asked or self.rank != 0 or (self.cuda and not missing):
            return
        why = ("no CUDA graphs on the CPU" if not self.cuda else
               f"{', '.join(map(str, missing))} not among the capture sizes {list(self.sizes)} "
               "(a recapture that adds it fails)")
        asked = sorted(asked)
        self.emit(R.event(R.EV_INFO, self.now(), message=f"--fail-capture-bucket {asked}: {why}"))

    def close(self) -> dict:
        """Finish in-flight steps, stop sampling, release graphs. Returns the end-record summary.
        After a CUDA fault (the device answers nothing) it still emits every step, without GPU times.
        With tensor parallelism, rank 0 tells the other ranks to stop and ends their processes; after a
        lost rank it waits on nothing (a GPU may be stuck in an all-reduce) and the summary has ``reason``."""
        rk = self.ranks
        if rk is not None and self.rank == 0 and self._midway and rk.lost is None:
            rk.lost = "rank 0 stopped in the middle of a step or command: the other ranks were ended"
        lost = rk is not None and rk.lost is not None
        if rk is not None and self.rank == 0 and not lost:
            try:
                self._send(RK.OP_STOP)
            except RK.RankLost:
                lost = True
        if lost and self.cuda:
            done = self.timer.abandon()
        else:
            try:
                done = self.timer.drain()
            except Exception as e:
                done = self.timer.abandon()
                self.emit(R.alert(self.now(), f"GPU times of the last {len(done)} steps lost: {type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0]}", level="error"))
        self._emit_done(done)
        if rk is not None and not lost:
            try:
                self._sync_measures()
            except RK.RankLost:
                lost = True
        if self.merge is not None:
            self.merge.flush(force=True)
        if self.rank == 0:
            self.sampler.stop()
            self.emit(self.sampler.sample())
        if self.graphs is not None and not lost:
            try:
                self.graphs.release()
            except Exception:
                pass   # the same fault: the process is ending, and the driver frees the graphs with it
        if rk is not None and self.rank == 0:
            rk.shutdown()
        summary = self._summary()
        if lost:
            summary["reason"] = rk.lost
        return summary

    # -- commands (the mechanism: control.CommandTaker) -------------------------------------------
    def control_state(self) -> dict:
        g = self.graphs
        return {"mode": "graph" if self.graph_mode else "eager", "kernels": self.kernels, "cuda": self.cuda,
                "sizes": list(self.sizes),
                "captured": g.ok_sizes() if g else [], "failed": g.failed_sizes() if g else [],
                "max_padding_ratio": self.max_padding_ratio, "rate": self.workload.rate,
                "arrival": self.workload.kind, "paused": self.paused}

    def command_limits(self) -> Limits:
        return Limits(self.max_batch, KV_SLOTS)

    def _commands_changed(self) -> None:
        self.table = self._table()
        self.timer.break_chain()

    def _run_command(self, cmd: Command) -> None:
        if self.ranks is not None and self.rank == 0 and cmd.name in self.ENGINE_COMMANDS:
            with self._together():
                self._send(RK.OP_CMD)                    # every rank runs it, between the same two steps
                self.ranks.broadcast((cmd.name, cmd.value))
                try:
                    super()._run_command(cmd)
                except CgwatchError:
                    self._midway = False   # refused alike on every rank: nobody is left inside it
                    raise
            return
        super()._run_command(cmd)

    def _note_no_cuda(self, t: float, what: str) -> None:
        """Without CUDA a mode or recapture command still applies (the dispatch follows it, as it would on a
        GPU), but nothing is captured and every step runs eager: the run says so, next to the command."""
        if not self.cuda:
            self.emit(R.alert(t, f"no CUDA: nothing is captured and every step runs eager (no_cuda); {what}",
                              level="info"))

    def _cmd_mode(self, mode: str, t: float) -> None:
        want = mode == "graph"
        if want == self.graph_mode:
            return
        self.graph_mode = want
        self.emit(R.event(R.EV_MODE, t, mode=mode))
        self._note_no_cuda(t, "the mode is the run's state only")
        if want and self.cuda and not (self.graphs and self.graphs.graphs):
            self._capture(self.sizes)

    def _cmd_recapture(self, value: list[int], t: float) -> None:
        sizes, dropped = effective_sizes(value, self.cfg.max_capture_size, self.max_batch)
        if not sizes:
            raise CgwatchError(f"no capture size is <= --max-cudagraph-capture-size {self.cfg.max_capture_size}")
        self.emit(R.event(R.EV_RECAPTURE, t, sizes=sizes, old=self.sizes, dropped=dropped))
        self.sizes = sizes
        self._note_no_cuda(t, "the sizes only set the bucket each step is counted under")
        if self.cuda and (self.graph_mode or self.graphs.graphs):
            self._release()
            self._capture(sizes)

    def _cmd_kernels(self, kind: str, t: float) -> None:
        """Switch the decode step's kernels (model.py: plain or fused); graphs are captured again."""
        if kind == self.kernels:
            return
        why = K.unavailable(self.device, self.dtype, interpreter=True) if kind == "fused" else None
        if why:
            raise CgwatchError(f"kernels {kind}: {why}")
        self._drain()   # steps in flight finish with the kernels they were launched with
        self.kernels = self.model.kernels = kind
        self.kernels_why = None
        self.emit(R.event(R.EV_INFO, t, message=f"kernels: {kind}", kernels=kind))
        if self.cuda and self.graphs.graphs:
            self._release()
            self._capture(self.sizes)

    def _cmd_padding(self, ratio: float, t: float) -> None:
        self.max_padding_ratio = check_ratio(ratio)
        self.emit(R.event(R.EV_PADDING, t, value=ratio))

    def _release(self) -> None:
        self._drain()   # graphs in flight must finish before they go
        freed, pool = self.graphs.release()
        self.emit(R.event(R.EV_RELEASE, self.now(), freed_bytes=freed, pool_bytes=pool))

    def _capture(self, sizes: list[int]) -> None:
        def on_bucket(b: BucketGraph) -> None:
            self.emit(R.event(R.EV_CAPTURE, self.now(), **b.event_fields()))
            if not b.ok:
                where = "" if b.failed_rank is None else f" on rank {b.failed_rank}"
                also = "" if b.failed_rank is None else " on every rank"
                self.emit(R.alert(self.now(), f"bucket {b.size} capture failed{where} ({b.cause}): {b.error}; "
                                  f"batches for it run eager{also}. Hint: {b.hint}", level="error", bucket=b.size,
                                  **({} if b.failed_rank is None else {"rank": b.failed_rank})))
            elif b.check and not b.check["tokens_equal"]:
                self.emit(R.alert(self.now(), f"bucket {b.size}: graph tokens differ from eager "
                                  f"(logits rel err {b.check['rel_err']:.2e})", bucket=b.size))
            for row in b.ranks or ():
                if row["rank"] and row["check"] and not row["check"]["tokens_equal"]:
                    self.emit(R.alert(self.now(), f"bucket {b.size} on rank {row['rank']}: graph tokens differ "
                                      f"from eager (logits rel err {row['check']['rel_err']:.2e})",
                                      bucket=b.size, rank=row["rank"]))
        self._drain()
        done = self.graphs.capture(sizes, on_bucket)
        if self.ranks is not None:
            done["rank_pool_bytes"] = self.ranks.all_gather(done["pool_bytes"])
        self.emit(R.capture_done(self.now(), **done))
        self.table = self._table()

    # -- the loop --------------------------------------------------------------------------------
    def _emit_done(self, done: list) -> None:
        out = self.merge.own if self.merge is not None else self.emit
        for rec, ms, gap_ms in done:
            rec["gpu_ms"] = ms if ms is None else round(ms, 4)
            rec["gap_us"] = gap_ms if gap_ms is None else round(gap_ms * 1000.0, 1)
            out(rec)

    def _drain(self) -> None:
        """Finish the steps in flight and emit them (with tensor parallelism: on every rank at once,
        every rank's times included)."""
        self._emit_done(self.timer.drain())
        if self.ranks is not None:
            self._sync_measures()

    # -- tensor parallelism: rank 0's side of the protocol (engine/ranks.py) ---------------------
    def _send(self, op: float, i: int = 0, bucket: int | None = None, active=(), admitted=()) -> None:
        """Rank 0: send an op (and a step's plan) to every rank; merge the step times they sent back."""
        parts = self.ranks.exchange(RK.encode_plan(op, i, bucket, list(active), list(admitted), self.plan_len))
        for r in range(1, self.tp):
            self.merge.add(r, RK.decode_measures(parts[r]))

    @contextmanager
    def _together(self):
        """Rank 0's side of work every rank does (a step, a command, a capture): if it raises, the other
        ranks are left inside it, so close() ends them instead of asking them to stop."""
        self._midway = True
        yield
        self._midway = False   # not on an exception: then close() sees it

    def _sync_measures(self) -> None:
        """Every rank: hand rank 0 all the step times not sent yet (after a drain)."""
        got = self.ranks.all_gather(self.measures if self.rank else None)
        self.measures = []
        if self.merge is not None:
            for r in range(1, self.tp):
                self.merge.add(r, got[r])
            self.merge.flush(force=True)

    ALL_RANK_CALLS = ("prefill_slots", "save_state", "restore_state", "_drain", "replay_bare")

    def call_all(self, name: str, *args):
        """Run one of ALL_RANK_CALLS on every rank (rank 0 sends it; one rank: a plain call). The bench
        drives the engine through these, so the other ranks' model state follows rank 0's."""
        if name not in self.ALL_RANK_CALLS:
            raise ValueError(name)
        if self.ranks is not None and self.rank == 0:
            with self._together():
                self._send(RK.OP_CALL)
                self.ranks.broadcast((name, args))
                return getattr(self, name)(*args)
        return getattr(self, name)(*args)

    def prefill_slots(self, slots: list[int], prompt_len: int) -> None:
        for slot in slots:
            self.state.prefill(slot, prompt_len)

    def save_state(self) -> None:
        self._saved_state = self.state.snapshot()

    def restore_state(self) -> None:
        self.state.restore(self._saved_state)

    def replay_bare(self, size: int, n: int) -> None:
        """Size ``size``'s captured graph replayed ``n`` times and nothing else: the bench's floor for cgwatch's
        own cost per step (every rank replays its own graph; the all-reduces inside keep them together)."""
        for _ in range(n):
            self.graphs.replay(size)

    def _keep_measure(self, rec: dict) -> None:
        """Rank > 0's emit: keep its step times for rank 0, drop the rest (rank 0 reports the run)."""
        if rec.get("type") == R.STEP:
            self.measures.append((rec["i"], R.step_ms(rec)))

    def _abort_stuck(self, reason: str) -> None:
        """The watchdog's way out, when a rank died and rank 0's main thread stays blocked (a GPU waiting
        in an all-reduce that will never complete, or the ranks' start: the rendezvous, a model load): say
        why, end the trace if the session has opened one, end the process (Ranks._watch ended the other ranks)."""
        opened = self.on_abort is not None
        try:
            if opened:
                self.emit(R.alert(self.now(), f"run stopped: {reason}", level="error"))
                self.on_abort(self._summary() | {"outcome": "error", "reason": reason, "t": round(self.now(), 6)})
        finally:
            print(f"cgwatch: {'run stopped by RankLost' if opened else STARTING}: {reason}", file=sys.stderr,
                  flush=True)
            os._exit(1)

    def follow(self) -> None:
        """Rank > 0: run what rank 0 sends (steps, commands) until it says stop; then close."""
        with torch.inference_mode():
            while True:
                k = min(len(self.measures), RK.MEASURES)
                parts = self.ranks.exchange(RK.encode_measures(self.measures[:k], self.plan_len))
                del self.measures[:k]
                op, i, bucket, active, admitted = RK.decode_plan(parts[0])
                if op == RK.OP_STEP:
                    self._run_step(i, admitted, active, Dispatch(bucket, bucket, None))
                elif op == RK.OP_CMD:
                    name, value = self.ranks.broadcast()
                    try:
                        CommandTaker._run_command(self, Command(name, value))
                    except CgwatchError:
                        continue                       # rank 0 got the same error and answered the sender
                    self._commands_changed()
                elif op == RK.OP_CALL:
                    name, args = self.ranks.broadcast()
                    self.call_all(name, *args)
                elif op == RK.OP_NOOP:
                    self._emit_done(self.timer.poll())
                elif op == RK.OP_START:
                    self.start()
                elif op == RK.OP_STOP:
                    break
            self.close()

    # -- the loop --------------------------------------------------------------------------------
    def step(self) -> bool:
        """One decode step. False when the workload has ended."""
        i = self.i
        self.apply_pending()
        plan = self.workload.next_step()
        if plan is None:
            return False
        if not plan.active:   # nothing live and nothing arriving (rate 0): wait for commands
            self._starved()
            return True
        admitted = [(a.slot, a.prompt_len) for a in plan.admitted]
        d = self.table[len(plan.active)]
        if self.ranks is None:
            self._run_step(i, admitted, plan.active, d)
            return True
        with self._together():
            t0 = time.perf_counter()
            self._send(RK.OP_STEP, i, d.bucket, plan.active, admitted)
            plan_us = (time.perf_counter() - t0) * 1e6
            try:
                self._run_step(i, admitted, plan.active, d, plan_us)
            except Exception as e:   # the model's all-reduces fail when a rank is gone: say which
                self.ranks.check_failure(e)
                raise
        return True

    def _run_step(self, i: int, admitted: list[tuple[int, int]], active: list[int], d: Dispatch,
                  plan_us: float | None = None) -> None:
        """The step itself, the same on every rank: prefill newcomers, then one graph replay or eager decode."""
        if admitted:
            self._prefill(admitted, i)
        batch = len(active)
        prof = self.cfg.profile_steps
        if prof and i == prof[0] and self.cuda:
            torch.cuda.profiler.start()
        t0 = time.perf_counter()
        self.nvtx.push(step_range_name(d.bucket))
        self.timer.start()
        self.state.set_slots(active, d.bucket or batch)
        if d.bucket is not None:
            self.graphs.replay(d.bucket)
        else:
            self.state.decode(batch)
        host_us = (time.perf_counter() - t0) * 1e6
        self.nvtx.pop()
        rec = R.step(i, t0 - self.t0, batch, d.target, d.bucket, d.reason, host_us, None, batch)
        if plan_us is not None:
            rec["plan_us"] = round(plan_us, 2)   # rank 0: sending the plan to the other ranks (before t)
        self._emit_done(self.timer.stop(rec))
        if prof and i == prof[1] and self.cuda:
            torch.cuda.profiler.stop()
        self.i = i + 1
        self.tokens += batch

    def _prefill(self, admitted: list[tuple[int, int]], i: int) -> None:
        """(slot, prompt length) pairs."""
        self.timer.break_chain()   # prefill work on the stream: the next step's gap is not idle time
        t0 = time.perf_counter()
        with self.nvtx.range("prefill"):
            for slot, prompt_len in admitted:
                self.state.prefill(slot, prompt_len)
        self.emit(R.prefill(i, t0 - self.t0, len(admitted), sum(n for _, n in admitted),
                            (time.perf_counter() - t0) * 1e3))

    def _loop_context(self):
        return torch.inference_mode()

    def _before_wait(self) -> None:
        """Paused or idle: emit the steps in flight; the other ranks get their heartbeat and hand in their times."""
        self._emit_done(self.timer.drain())
        if self.ranks is not None:
            self._send(RK.OP_NOOP)
