"""``cgwatch`` command line. Bad input: one line on stderr, exit 2; never a traceback."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time

from cgwatch.errors import CgwatchError, exit_text

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    argv: list[str] = []   # the command line being parsed (main sets it)

    def error(self, message):  # one line, not argparse's usage block
        if message.endswith("expected one argument"):   # a value that starts with '-' reads as an option
            flags = message.removeprefix("argument ").split(":")[0].split("/")
            after = [b for a, b in zip(self.argv, self.argv[1:]) if a in flags]
            if after and after[0].startswith("-"):
                message += f" ({after[0]!r} reads as an option: write {flags[-1]}={after[0]})"
        raise CgwatchError(f"{message} (see '{self.prog} --help')")


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    from cgwatch.backends import BACKENDS, DEFAULT_BACKEND
    from cgwatch.backends.vllm_config import CUDAGRAPH_MODES
    from cgwatch.engine.buckets import DEFAULT_CAPTURE_SIZES
    from cgwatch.engine.control import ACTIONS_HELP
    from cgwatch.workload import WorkloadSpec

    w = WorkloadSpec()
    m = p.add_argument_group("model")
    m.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="pytorch: cgwatch's own decode loop (default); vllm: a real vLLM engine "
                        "(pip install 'cgwatch[vllm]', docs/VLLM.md)")
    m.add_argument("--model", default=None, help="preset (tiny, llama-1b, llama-8b; random weights; default tiny) "
                   "or a local Hugging Face checkpoint folder (Llama, Mistral, Qwen2); with --backend vllm: "
                   "any model vLLM takes (HF id or path)")
    m.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    m.add_argument("--tensor-parallel-size", "--tp", type=int, default=1, metavar="N",
                   help="split the model over N ranks, one process and one GPU each (rank r on cuda:r; "
                        "gloo on the CPU); with --backend vllm: passed to vLLM (default 1)")
    m.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    m.add_argument("--max-seq", type=int, default=1024,
                   help="KV cache positions per request (default 1024; vLLM's max_model_len)")
    m.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the model on the CPU (default: $OMP_NUM_THREADS if set, else the "
                        "physical cores less one, at most 8; pytorch backend)")
    g = p.add_argument_group("CUDA graphs")
    g.add_argument("--cudagraph-capture-sizes", default=None,
                   help=f"batch-size buckets to capture (default {','.join(map(str, DEFAULT_CAPTURE_SIZES))}; "
                        "with --backend vllm: vLLM's default list)")
    g.add_argument("--max-cudagraph-capture-size", type=int, default=None, help="drop capture sizes above this")
    g.add_argument("--max-padding-ratio", type=float, default=None,
                   help="run eager when (bucket - batch) / bucket would exceed this (default 0.5; pytorch backend)")
    g.add_argument("--mode", choices=("graph", "eager"), default=None, help="start in graph (default) or eager mode")
    g.add_argument("--enforce-eager", action="store_true", help="same as --mode eager")
    g.add_argument("--kernels", choices=("auto", "fused", "plain"), default=None,
                   help="the decode step's kernels: fused (Triton: add+norm, RoPE+KV write, attention over "
                        "live positions, SiLU*up) or plain PyTorch; auto (default) = fused where CUDA and "
                        "Triton are (pytorch backend)")
    g.add_argument("--graph-pool", choices=("shared", "private"), default=None,
                   help="one memory pool for all graphs (default) or one per graph (pytorch backend)")
    g.add_argument("--fail-capture-bucket", action="append", default=[], metavar="N[@RANK]",
                   help="fault injection for testing: bucket N's capture performs a host sync and fails "
                        "(on every rank, or only on RANK)")
    v = p.add_argument_group("vLLM (--backend vllm)")
    v.add_argument("--cudagraph-mode", type=str.upper, choices=CUDAGRAPH_MODES, default=None, metavar="MODE",
                   help=f"vLLM's compilation_config.cudagraph_mode: {', '.join(CUDAGRAPH_MODES)} "
                        "(default: vLLM's, FULL_AND_PIECEWISE)")
    v.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="share of GPU memory vLLM may use (default: vLLM's, 0.9)")
    v.add_argument("--max-num-seqs", type=int, default=None,
                   help="vLLM's cap on sequences per step (default: --max-concurrency)")
    v.add_argument("--load-format", default=None, metavar="FORMAT",
                   help="vLLM's --load-format: 'dummy' = random weights, no download (a cgwatch preset, or a "
                        "folder holding just config.json); default: vLLM's")
    wl = p.add_argument_group("workload")
    wl.add_argument("--arrival", default=w.arrival, help="poisson:RATE (new requests per step), fixed:B, "
                    "or replay:PATH (a batch size per step) (default %(default)s)")
    wl.add_argument("--prompt-len", default=w.prompt_len, help="fixed:N | uniform:A:B | lognormal:MEDIAN:SIGMA")
    wl.add_argument("--output-len", default=w.output_len, help="decode steps per request, same forms")
    wl.add_argument("--max-concurrency", type=int, default=w.max_concurrency, help="KV slots = cap on live requests")
    r = p.add_argument_group("run")
    r.add_argument("--steps", type=int, default=None, help="stop after N decode steps (default: until Ctrl-C)")
    r.add_argument("--at", action="append", default=[], metavar="STEP:ACTION",
                   help=f"before decode step STEP: {ACTIONS_HELP} (repeatable)")
    r.add_argument("--record", metavar="PATH", help="write a trace file: PATH.jsonl JSON Lines, any other name the "
                   "compact format (PATH.parquet: Parquet once closed)")
    r.add_argument("--overwrite", action="store_true", help="with --record: replace a trace already at PATH")
    r.add_argument("--rotate-size", type=_size, metavar="SIZE", help="with --record: a new part file (PATH "
                   "-> PATH.000, .001, ... before the suffix) when a part reaches SIZE on disk (e.g. 512MB; a "
                   "compact part's closed size, estimated while it records)")
    r.add_argument("--rotate-time", type=_duration, metavar="TIME", help="with --record: a new part file "
                   "when a part is TIME old (e.g. 1h, 30m, 90s)")
    r.add_argument("--profile-steps", metavar="A:B",
                   help="cudaProfilerStart/Stop around steps A..B (nsys --capture-range=cudaProfilerApi)")
    r.add_argument("--no-nvtx", action="store_true", help="no NVTX ranges")
    r.add_argument("--sample-interval", type=float, default=0.25, help="seconds between NVML/host samples")


_VLLM_ONLY = ("cudagraph_mode", "gpu_memory_utilization", "max_num_seqs", "load_format")


def _size(text: str) -> int:
    """'512MB', '2GB', '100k', '4096' -> bytes (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if mult > 1 else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512MB)") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"a size must be > 0, got {text!r}")
    return int(n * mult)


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free one), got {n}")
    return n


def _duration(text: str) -> float:
    """'1h', '30m', '90s', '90' -> seconds."""
    t = text.strip().lower()
    mult = {"h": 3600, "m": 60, "s": 1}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if t[-1:] in "hms" else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1h, 30m)") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"a duration must be > 0, got {text!r}")
    return n * mult


def rotation(a) -> dict:
    """TraceWriter's rotation arguments from --rotate-size / --rotate-time."""
    if (a.rotate_size or a.rotate_time) and not a.record:
        raise CgwatchError("--rotate-size and --rotate-time need --record PATH")
    return {"rotate_bytes": a.rotate_size, "rotate_s": a.rotate_time}


def _fail_captures(values: list[str]) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """--fail-capture-bucket N (every rank) or N@RANK -> (buckets, (bucket, rank) pairs)."""
    every, on = [], []
    for v in values:
        bucket, at, rank = v.partition("@")
        if not bucket.isdigit() or (at and not rank.isdigit()):
            raise CgwatchError(f"bad --fail-capture-bucket {v!r}: expected N or N@RANK, e.g. 8 or 8@1")
        (on.append((int(bucket), int(rank))) if at else every.append(int(bucket)))
    return tuple(every), tuple(on)


def _common_checks(a) -> None:
    if a.enforce_eager and a.mode == "graph":
        raise CgwatchError("--enforce-eager and --mode graph contradict each other: choose one")
    a.mode = "eager" if a.enforce_eager else a.mode or "graph"
    if not math.isfinite(a.temperature) or a.temperature < 0:
        raise CgwatchError(f"--temperature must be >= 0 (0: greedy), got {a.temperature}")
    if a.max_cudagraph_capture_size is not None and a.max_cudagraph_capture_size < 1:
        raise CgwatchError(f"--max-cudagraph-capture-size must be >= 1, got {a.max_cudagraph_capture_size}")
    if a.cudagraph_capture_sizes is not None and not a.cudagraph_capture_sizes.replace(",", "").strip():
        raise CgwatchError("--cudagraph-capture-sizes is empty: give sizes like 1,2,4,8, or --mode eager")
    rotation(a)
    from cgwatch.trace import check_record_path
    check_record_path(a.record, a.overwrite)
    if a.tensor_parallel_size < 1:
        raise CgwatchError(f"--tensor-parallel-size must be >= 1, got {a.tensor_parallel_size}")
    if a.steps is not None and a.steps < 1:
        raise CgwatchError(f"--steps must be >= 1, got {a.steps}")
    if a.sample_interval <= 0:
        raise CgwatchError("--sample-interval must be > 0")


def _engine_config(a):
    """The engine config for the chosen backend: EngineConfig (pytorch) or VllmEngineConfig (vllm)."""
    _common_checks(a)
    if a.backend == "vllm":
        return _vllm_config(a)
    from cgwatch.engine.buckets import DEFAULT_CAPTURE_SIZES, parse_sizes
    from cgwatch.engine.control import KV_SLOTS, Limits, parse_scheduled, parse_step_range
    from cgwatch.engine.loop import EngineConfig
    from cgwatch.workload import Workload, WorkloadSpec, clamp_note

    for name in _VLLM_ONLY:
        if getattr(a, name) is not None:
            raise CgwatchError(f"--{name.replace('_', '-')} applies to --backend vllm only")
    sizes = DEFAULT_CAPTURE_SIZES if a.cudagraph_capture_sizes is None else parse_sizes(a.cudagraph_capture_sizes)
    fail_every, fail_on = _fail_captures(a.fail_capture_bucket)
    if fail_on and a.tensor_parallel_size == 1 and any(r for _, r in fail_on):
        raise CgwatchError("--fail-capture-bucket N@RANK: RANK must be 0 without --tensor-parallel-size")
    for b in (*fail_every, *(b for b, _ in fail_on)):
        if not 1 <= b <= a.max_concurrency:
            raise CgwatchError(f"--fail-capture-bucket {b}: no bucket can be {b} (sizes run from 1 to "
                               f"--max-concurrency {a.max_concurrency})")
    if a.threads is not None and a.threads < 1:
        raise CgwatchError(f"--threads must be >= 1, got {a.threads}")
    limits = Limits(a.max_concurrency, KV_SLOTS)   # the engine's own (Engine.command_limits)
    workload = WorkloadSpec(arrival=a.arrival, prompt_len=a.prompt_len, output_len=a.output_len,
                            max_concurrency=a.max_concurrency, max_seq=a.max_seq, seed=a.seed)
    Workload(workload)                       # its checks, before the model loads
    note = clamp_note(workload)
    if note:
        print(f"cgwatch: note: {note}", file=sys.stderr)
    return EngineConfig(
        model=a.model or "tiny", device=a.device, dtype=a.dtype, max_seq=a.max_seq,
        capture_sizes=tuple(sizes),
        max_capture_size=a.max_cudagraph_capture_size,
        max_padding_ratio=0.5 if a.max_padding_ratio is None else a.max_padding_ratio,
        mode=a.mode, kernels=a.kernels or "auto", pool=a.graph_pool or "shared",
        temperature=a.temperature, seed=a.seed,
        workload=workload,
        schedule=tuple(parse_scheduled(s, limits) for s in a.at),
        profile_steps=parse_step_range(a.profile_steps) if a.profile_steps else None,
        fail_capture=fail_every, fail_capture_on=fail_on, tensor_parallel_size=a.tensor_parallel_size,
        nvtx=not a.no_nvtx, sample_interval_s=a.sample_interval, threads=a.threads)


def _vllm_config(a):
    """--backend vllm: flags checked (one line each), the workload spec checked, vLLM installed and in
    the tested range (checked without importing it); vLLM itself is imported by the engine."""
    from cgwatch.backends.vllm_config import VllmEngineConfig
    from cgwatch.backends.vllm_version import require_vllm
    from cgwatch.engine.buckets import parse_sizes
    from cgwatch.engine.control import parse_scheduled
    from cgwatch.workload import Workload, WorkloadSpec

    unavailable = [(a.device != "auto", "--device (vLLM picks its GPU: use CUDA_VISIBLE_DEVICES)"),
                   (a.max_padding_ratio is not None, "--max-padding-ratio (vLLM pads every batch up to the next "
                                                     "capture size)"),
                   (a.graph_pool is not None, "--graph-pool (vLLM captures into one shared pool)"),
                   (bool(a.fail_capture_bucket), "--fail-capture-bucket"),
                   (a.profile_steps is not None, "--profile-steps (use vLLM's own profiler)"),
                   (a.threads is not None, "--threads"),
                   (a.kernels is not None, "--kernels (vLLM picks its own kernels)")]
    for given, what in unavailable:
        if given:
            raise CgwatchError(f"{what} is not available with --backend vllm")
    if not a.model:
        raise CgwatchError("--backend vllm needs --model HF_ID_OR_PATH (e.g. meta-llama/Llama-3.2-1B)")
    workload = WorkloadSpec(arrival=a.arrival, prompt_len=a.prompt_len, output_len=a.output_len,
                            max_concurrency=a.max_concurrency, max_seq=a.max_seq, seed=a.seed)
    cfg = VllmEngineConfig(
        model=a.model, load_format=a.load_format, dtype=a.dtype, max_seq=a.max_seq,
        capture_sizes=None if a.cudagraph_capture_sizes is None else tuple(parse_sizes(a.cudagraph_capture_sizes)),
        max_capture_size=a.max_cudagraph_capture_size, cudagraph_mode=a.cudagraph_mode,
        mode=a.mode, gpu_memory_utilization=a.gpu_memory_utilization,
        max_num_seqs=a.max_num_seqs, tensor_parallel_size=a.tensor_parallel_size, temperature=a.temperature, seed=a.seed, workload=workload,
        schedule=tuple(parse_scheduled(s) for s in a.at), sample_interval_s=a.sample_interval)
    Workload(workload)          # bad arrival / lengths / replay file: fail now, not after vLLM's start-up
    require_vllm()
    return cfg


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)   # SIGHUP: the terminal closed
PARENT_GONE_EXIT_S = 60.0   # a daemon child whose parent died stops cleanly, or is ended after this


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _die_with_parent(fd: int, stop: threading.Event) -> None:
    """The daemon child of ``cgwatch run``: stop when the parent is gone, whatever ended it (SIGKILL
    too). Portable: ``fd`` is the read end of a pipe whose only write end the parent holds, so it
    reads EOF once the parent exited. On Linux, prctl(PR_SET_PDEATHSIG) also sends this process
    SIGTERM then. Either way ``stop`` is set and the run ends as on SIGTERM (the trace gets its end
    record, the socket file goes); a loop that does not end within PARENT_GONE_EXIT_S is ended."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)   # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass   # the pipe alone does it

    def watch() -> None:
        try:
            while os.read(fd, 64):
                pass   # the parent never writes; EOF: it is gone
        except OSError:
            pass
        stop.set()
        time.sleep(PARENT_GONE_EXIT_S)
        os._exit(1)

    threading.Thread(target=watch, name="cgwatch-parent-watch", daemon=True).start()


def cmd_run(a) -> int:
    if not a.headless:
        return _run_with_tui(a)
    from cgwatch.backends import make_engine
    from cgwatch.headless import StatusLine
    from cgwatch.session import Session, stopped_error

    cfg = _engine_config(a)
    session = Session.open(lambda emit: make_engine(cfg, emit), record=a.record, rotate=rotation(a),
                           prometheus=a.prometheus)
    status = StatusLine()
    session.fanout.add(status)
    engine, h = session.engine, session.header
    backend = f", vLLM {h['vllm']}" if h.get("backend") == "vllm" else ""
    no_cuda = cfg.mode == "graph" and getattr(engine, "cuda", True) is False
    mode = "eager (graphs need CUDA)" if no_cuda else cfg.mode
    mode += f", {h['kernels']} kernels" if h.get("kernels") else ""
    tp = h.get("tensor_parallel_size") or 1
    gpu = f"{h['gpu']} ×{tp} (tensor parallel)" if tp > 1 else h["gpu"]
    print(f"cgwatch {h['cgwatch']}: {h['model']['name']} on {gpu} ({h['dtype']}{backend}), mode {mode}, "
          f"sizes {engine.sizes}, workload {cfg.workload.arrival}" + (f", recording {a.record}" if a.record else ""))
    for note in h.get("vllm_notes") or ():
        print(note)
    if session.metrics is not None:
        print(f"metrics on {session.metrics.url}")
    stop = _stop_on_signals()
    try:
        with session:
            session.run(lambda: engine.run(a.steps, stop.is_set), stop)
    except CgwatchError:
        raise
    except Exception as e:  # a crash inside the loop: the trace keeps what was recorded; say what happened
        raise stopped_error("run", e) from e
    finally:
        status.finish(time.monotonic())
        summary = session.summary
        if summary is not None:
            trace = f"; trace {a.record} (cgwatch report {a.record})" if a.record else ""
            print(f"{session.outcome}: {summary['steps']} steps, {summary['tokens']} tokens in "
                  f"{summary['duration_s']:.1f} s{trace}")
    return 0


# what to use instead of the TUI, per command
_PLAIN = {"cgwatch run": "'cgwatch run --headless' (a status line a second)",
          "cgwatch replay": "'cgwatch report TRACE' (the same numbers as text)",
          "cgwatch attach": "the daemon's --prometheus metrics"}


def _need_terminal(what: str) -> None:
    """The TUI needs a terminal that can draw: not a pipe, and not TERM=dumb (Textual would write its
    escape sequences to it all the same). NO_COLOR is honoured by the TUI itself (no colour at all)."""
    if os.environ.get("TERM") == "dumb":
        raise CgwatchError(f"{what} needs a terminal that can draw a full-screen TUI, and TERM=dumb cannot; "
                           f"use {_PLAIN[what]}")
    if not sys.__stderr__.isatty():   # Textual draws on stderr: 2>file or 2>/dev/null takes the screen away
        why = (f"{what} needs a terminal: it draws its TUI on stderr, which is redirected here; "
               f"use {_PLAIN[what]}, or leave stderr on the terminal")
        if sys.stdout.isatty():   # 2>/dev/null would swallow the error: the terminal gets it too
            print(f"cgwatch: {why}", flush=True)
        raise CgwatchError(why)
    if not sys.stdin.isatty():
        raise CgwatchError(f"{what} needs a terminal for the TUI (stdin is not one); use {_PLAIN[what]} or a terminal")


def _run_with_tui(a) -> int:
    """``cgwatch run``: a daemon child on a private socket, the TUI attached; quitting stops both."""
    import subprocess

    from cgwatch.client import LiveSource
    from cgwatch.daemon import default_socket_path
    from cgwatch.tui.app import run_tui

    cfg = _engine_config(a)                             # bad flags fail here, before anything starts
    _need_terminal("cgwatch run")
    sock = default_socket_path()
    log_path = sock.removesuffix(".sock") + ".log"
    child_args = [x for x in a.argv[1:] if x != "--headless"]
    alive_r, alive_w = os.pipe()   # the child reads EOF here once this process is gone (_die_with_parent)
    cmd = [*daemon_child_command(), *child_args, "--listen", f"unix:{sock}", "--parent-fd", str(alive_r)]
    try:
        with open(log_path, "w") as log:   # its own session: the terminal's signals go to this process only
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, pass_fds=(alive_r,),
                                     start_new_session=True)
    finally:
        os.close(alive_r)
    if getattr(cfg, "backend", "pytorch") == "vllm":
        print(f"cgwatch: starting vLLM with {cfg.model} (load, compile and graph capture take a while; "
              f"its log: {log_path})", flush=True)
    try:
        line = child.stdout.readline()                  # "cgwatch daemon listening on ..." once ready
        while line and "listening on" not in line:      # anything a library printed before it
            with open(log_path, "a") as log:
                log.write(line)
            line = child.stdout.readline()
        if "listening on" not in line:
            child.wait(timeout=10)
            last = (open(log_path).read().strip().splitlines() or ["the daemon exited"])[-1]
            raise CgwatchError(last.removeprefix("cgwatch: "))
        threading.Thread(target=child.stdout.read, daemon=True).start()   # keep its pipe drained

        def gone() -> str | None:   # the TUI's source stops reconnecting once the child is gone, and says why
            return None if child.poll() is None else f"the daemon {exit_text(child.returncode)}"
        rc = run_tui(LiveSource(f"unix:{sock}", token=None, gone=gone), exit_on=(signal.SIGTERM, signal.SIGHUP))
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        os.close(alive_w)
        if os.path.exists(sock):   # a daemon that was killed could not remove its socket file
            try:
                os.unlink(sock)
            except OSError:
                pass
    if child.returncode == 0:
        os.unlink(log_path)                             # keep the daemon's log only when it failed
    else:
        print(f"cgwatch: the daemon {exit_text(child.returncode)}; its log: {log_path}", file=sys.stderr)
    if a.record:
        print(f"trace {a.record} (cgwatch report {a.record})")
    return rc or (0 if child.returncode == 0 else 1)


def daemon_child_command() -> list[str]:
    """``cgwatch daemon`` as a child process that imports the very cgwatch this process runs: not
    ``python -m cgwatch``, which imports a ``cgwatch/`` folder in the working directory first (say,
    in the parent of a clone). The package's own parent directory goes first on sys.path instead
    (``python -P`` would need Python 3.11)."""
    import cgwatch
    where = os.path.dirname(os.path.dirname(os.path.abspath(cgwatch.__file__)))
    boot = "import sys; sys.path[0] = sys.argv.pop(1); from cgwatch.cli import main; sys.exit(main())"
    return [sys.executable, "-c", boot, where, "daemon"]


def _check_token(token: str | None) -> None:
    if token is not None and not token.strip():
        raise CgwatchError("--token is empty: give the token (or leave --token out)")


def cmd_daemon(a) -> int:
    from cgwatch.daemon import run_daemon

    _check_token(a.token)
    cfg = _engine_config(a)
    stop = _stop_on_signals()
    if a.parent_fd is not None:
        _die_with_parent(a.parent_fd, stop)
    summary = run_daemon(cfg, listen=a.listen, token=a.token, record=a.record, prometheus_port=a.prometheus,
                         max_steps=a.steps, stop=stop, rotate=rotation(a))
    print(f"daemon stopped: {summary['steps']} steps, {summary['tokens']} tokens", flush=True)
    return 0


def cmd_attach(a) -> int:
    from cgwatch.client import LiveSource
    from cgwatch.tui.app import run_tui

    from cgwatch.client import connect

    _check_token(a.token)
    try:                                   # a typo fails now; a daemon lost later is reconnected to
        conn = connect(a.addr, token=a.token, timeout=5)
    except OSError as e:
        from cgwatch.protocol import parse_address
        kind, path, _ = parse_address(a.addr)
        if kind == "unix" and os.path.isfile(path):
            raise CgwatchError(f"{path} is a file, not a daemon's socket (a trace? cgwatch replay {path})") from None
        raise CgwatchError(f"cannot reach a daemon at {a.addr}: {e.strerror or e}") from None
    try:                                   # so does a wrong token, not at the first key
        reply = conn.auth() if a.token and conn.hello.get("control") == "token" else {"ok": True}
    except (OSError, TimeoutError, ConnectionError) as e:
        raise CgwatchError(f"the daemon at {a.addr} did not answer: {e}") from None
    finally:
        conn.close()
    if not reply.get("ok"):
        raise CgwatchError(f"the daemon at {a.addr} refused the token ({reply.get('error')}); "
                           "leave out --token to watch read-only")
    _need_terminal("cgwatch attach")
    return run_tui(LiveSource(a.addr, token=a.token), exit_on=(signal.SIGTERM, signal.SIGHUP))


def cmd_replay(a) -> int:
    from cgwatch.replay import ReplaySource
    from cgwatch.tui.app import run_tui

    if (a.sample is not None) == bool(a.trace):
        raise CgwatchError("give a trace file or --sample [NAME] (a bundled trace: cgwatch samples)"
                           + (", not both" if a.trace else ""))
    if a.sample is not None:
        from cgwatch.samples import sample_path
        a.trace = sample_path(a.sample)
    if not 0.25 <= a.speed <= 16:
        raise CgwatchError(f"--speed must be between 0.25 and 16, got {a.speed}")
    from cgwatch.window import of_args
    start = of_args(a)   # (--from, --last: no --to) a bad time: one line, before the trace is read
    source = ReplaySource(a.trace, speed=a.speed, start=start)
    _need_terminal("cgwatch replay")
    for w in source.warnings:
        print(f"cgwatch: {w}", file=sys.stderr)
    return run_tui(source, exit_on=(signal.SIGTERM, signal.SIGHUP))


def cmd_report(a) -> int:
    from cgwatch.report import build_report, format_report
    from cgwatch.trace import read_trace

    from cgwatch.window import of_args, windowed
    window = of_args(a)   # a bad time: one line, before the trace is read
    trace = read_trace(a.trace)
    rep = build_report(trace if window is None else windowed(trace, window))
    if a.json:   # strict JSON: a value that is not a finite number is null
        from cgwatch.jsonl import dump_strict
        dump_strict(rep, sys.stdout)
        for w in rep["warnings"]:
            print(f"cgwatch: warning: {w}", file=sys.stderr)
    else:
        sys.stdout.write(format_report(rep) + "\n")
    return 0


def cmd_samples(a) -> int:
    from cgwatch.samples import listing
    print(listing())
    return 0


# arguments that name a trace to read: sample:NAME there is a bundled trace (cgwatch samples)
TRACE_ARGS = ("trace", "costs")


def _resolve_samples(a) -> None:
    from cgwatch.samples import resolve
    for name in TRACE_ARGS:
        v = getattr(a, name, None)
        if isinstance(v, str):
            setattr(a, name, resolve(v))
        elif isinstance(v, list):
            setattr(a, name, [resolve(x) for x in v])


TRACE_COMMANDS = ("report", "recommend", "export", "convert")   # read a trace; numpy without BLAS threads
COMMANDS = ("run", "daemon", "attach", "replay", "report", "samples", "bench", "check", "recommend", "export",
            "convert")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; ``only``: build just that subcommand (the others' imports, vLLM's config and
    the engine's among them, cost a report or an export ~0.1 s of its start)."""
    from cgwatch import __version__

    from cgwatch.samples import SAMPLE

    want = (lambda name: True) if only not in COMMANDS else (lambda name: name == only)  # noqa: E731
    p = _Parser(prog="cgwatch", description="Watch and tune CUDA graphs in an LLM decode loop.")
    p.add_argument("--version", action="version", version=f"cgwatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    if want("run"):
        run = sub.add_parser("run", help="run the decode loop with the live TUI (or --headless)")
        run.add_argument("--headless", action="store_true", help="no TUI: a status line every second")
        _add_engine_flags(run)
        run.add_argument("--prometheus", type=_port, metavar="PORT",
                         help="serve /metrics on 127.0.0.1:PORT (0: any free port, printed)")
        run.set_defaults(func=cmd_run)
    if want("daemon"):
        d = sub.add_parser("daemon", help="run the decode loop and serve it to TUIs and scripts")
        _add_engine_flags(d)
        d.add_argument("--listen", metavar="ADDR", help="unix:PATH (default: a private socket) or HOST:PORT")
        d.add_argument("--token", help="required for control; required to bind anything but loopback")
        d.add_argument("--prometheus", type=_port, metavar="PORT",
                         help="serve /metrics on 127.0.0.1:PORT (0: any free port, printed)")
        d.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)   # cgwatch run's child
        d.set_defaults(func=cmd_daemon)
    if want("attach"):
        at = sub.add_parser("attach", help="attach the TUI to a running daemon")
        at.add_argument("addr", help="unix:PATH, a socket path, or HOST:PORT")
        at.add_argument("--token", help="the daemon's control token")
        at.set_defaults(func=cmd_attach)
    if want("replay"):
        rp = sub.add_parser("replay", help="replay a trace in the TUI")
        rp.add_argument("trace", nargs="*", help="a trace file (either format; a rotated run's parts), or sample:NAME")
        rp.add_argument("--sample", nargs="?", const=SAMPLE, metavar="NAME",
                        help=f"a bundled trace (default {SAMPLE.removesuffix('.jsonl')}; 'cgwatch samples' lists them)")
        rp.add_argument("--speed", type=float, default=1.0, help="playback speed, 0.25..16 (default 1)")
        rp.add_argument("--from", dest="start", metavar="T", help="start playing at this time of the run (seconds "
                        "since its start, or like 90s, 15m, 1h30m)")
        rp.add_argument("--last", metavar="D", help="start playing D (like 10m) before the run's latest record")
        rp.set_defaults(func=cmd_replay)
    if want("report"):
        rep = sub.add_parser("report", help="per-bucket table and totals of a trace")
        rep.add_argument("trace", nargs="+", help="a trace file written by 'cgwatch run --record' (either format; "
                         "a rotated run's parts, or its first part), or sample:NAME")
        rep.add_argument("--json", action="store_true", help="machine-readable output")
        from cgwatch.window import add_arguments
        add_arguments(rep)
        rep.set_defaults(func=cmd_report)
    if want("samples"):
        sm = sub.add_parser("samples", help="list the bundled traces (sample:NAME wherever a trace goes)")
        sm.set_defaults(func=cmd_samples)
    # Analysis commands: each module registers its own subcommand (add_parser) and runs it (run).
    import importlib
    for name in ("bench", "check", "recommend", "export", "convert"):
        if want(name):
            importlib.import_module(f"cgwatch.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    program = argv is None   # the process's own command line (not a call from a test): may end it at once
    try:
        argv = sys.argv[1:] if argv is None else argv
        if argv and argv[0] in TRACE_COMMANDS:   # before numpy loads: OpenBLAS's idle threads cost ~0.1 s CPU
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            if program:
                from cgwatch.heap import keep_freed_memory
                keep_freed_memory()
        _Parser.argv = argv
        a = build_parser(argv[0] if argv else None).parse_args(argv)
        a.argv = argv
        _resolve_samples(a)
        return _exit(a.func(a), program)
    except CgwatchError as e:
        print(f"cgwatch: {e}", file=sys.stderr)
        return _exit(EXIT_USAGE if not isinstance(e.__cause__, Exception) else 1, program)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug or an environment problem: still one line (CGWATCH_DEBUG=1 for the traceback)
        if os.environ.get("CGWATCH_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, MemoryError) or "OutOfMemoryError" in type(e).__name__ or "can't allocate memory" in first:
            print(f"cgwatch: out of memory ({type(e).__name__}: {first[:200]}): lower the sizes asked for "
                  "(--max-concurrency, --max-seq, --batch-sizes)", file=sys.stderr)
            return 1
        print(f"cgwatch: internal error: {type(e).__name__}: {first} (set CGWATCH_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def _exit(code: int, program: bool) -> int:
    """After a lost tensor-parallel rank, end the process at once: NCCL's teardown may hang on it."""
    ranks = sys.modules.get("cgwatch.engine.ranks")
    if program and ranks is not None and ranks.HARD_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
