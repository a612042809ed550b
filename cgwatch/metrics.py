"""Prometheus metrics from the record stream (a sink: ``metrics(rec)``), on their own registry.

Names follow Prometheus conventions: prefix ``cgwatch_``, base units (seconds, bytes, hertz, watts),
counters end in ``_total``, ratios are 0..1. A value that could not be measured (None) leaves its
gauge untouched; a gauge never measured is not exported at all, rather than exported as a fake 0.
Values are plain numbers turned into metric families at scrape time, so a step record costs
a few microseconds (prometheus_client's own Counter/Histogram objects cost ~14 us per step).

The counters are read from ``cgwatch.aggregate.RunStats`` (the report's and the TUI's accumulator,
whose docstring defines them), labelled by the bucket row (``bucket`` = the target capture size,
``over_max`` above the largest): every row seen has every per-bucket counter, 0 included. From them:
hit % = sum(cgwatch_bucket_steps_total) / (sum(cgwatch_bucket_forwards_total) -
sum(cgwatch_bucket_misses_total{reason=~"eager_mode|no_cuda"})), graph share = sum(cgwatch_bucket_steps_total)
/ sum(cgwatch_bucket_forwards_total), padding waste = cgwatch_padding_rows_total /
cgwatch_graph_rows_total.

NVML gauges are per GPU, labelled ``gpu`` (the rank's CUDA index; "0" for a one-GPU run). A
tensor-parallel run adds per-rank series labelled ``rank`` (RunStats.ranks): step time and steps
measured (mean step time per rank = rate of the first over rate of the second), steps that rank was
the slowest, the skew between ranks, each rank's graph pool and failed captures.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from itertools import accumulate

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from cgwatch import records as R
from cgwatch.aggregate import OVER_MAX, RunStats
from cgwatch.errors import CgwatchError

# Step time from 0.1 ms to 10 s, host launch time from 10 us to 10 s: a CPU step (host time is the
# step time) takes tens of ms on the tiny preset and seconds on llama-1b.
STEP_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1,
                0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
LAUNCH_BUCKETS = (0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1,
                  0.5, 1.0, 5.0, 10.0)
GAP_BUCKETS = (0.000001, 0.000002, 0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05)

# sample field -> (gauge, scale to base unit, help): per GPU (label gpu) ...
_GPU_GAUGES = {
    "gpu_util": ("cgwatch_gpu_utilization_ratio", 0.01, "NVML GPU utilization, 0..1, by GPU"),
    "mem_used_bytes": ("cgwatch_gpu_memory_used_bytes", 1, "NVML device memory used (all processes), bytes, by GPU"),
    "power_w": ("cgwatch_gpu_power_watts", 1, "Board power, watts, by GPU"),
    "sm_clock_mhz": ("cgwatch_sm_clock_hertz", 1e6, "SM clock, hertz, by GPU"),
}
# ... and of the engine process (rank 0)
_SAMPLE_GAUGES = {
    "gpu_busy": ("cgwatch_gpu_busy_ratio", 1, "Share of the last sample interval covered by GPU step time, 0..1"),
    "cpu_pct": ("cgwatch_process_cpu_ratio", 0.01, "CPU use of the engine process, cores (1.0 = one core)"),
}
_PLAIN_HELP = {
    "cgwatch_graph_pool_bytes": "Graph memory of the last capture round (shared pool), bytes; 0 with no CUDA",
    "cgwatch_mode_graph": "1 in graph mode, 0 in eager mode",
    "cgwatch_kernels_fused": "1 when the decode step runs cgwatch's fused Triton kernels, 0 the plain PyTorch ones "
                             "(cgwatch's engine only)",
    **{name: help_ for name, _, help_ in _SAMPLE_GAUGES.values()},
}
_BUCKET_HELP = {
    "cgwatch_bucket_graph_bytes": "Bytes the bucket's capture added to the graph pool",
    "cgwatch_capture_seconds": "Warm-up + capture time of the bucket's last capture, seconds",
    "cgwatch_bucket_capture_failed": "1 when the bucket's last capture failed (the bucket runs eager), else 0",
}
# run metadata as labels of one gauge of value 1 (join on instance): which server runs what
INFO_LABELS = ("backend", "model", "gpu", "dtype", "cgwatch", "vllm")


def _counter(name: str, help_: str, labels: tuple[str, ...], values: list[tuple[tuple, float]]):
    fam = CounterMetricFamily(name, help_, labels=list(labels))
    for key, v in values:
        fam.add_metric(list(key), v)
    return fam


# per-bucket counters read from a RunStats row: (name, help, Row attribute)
_ROW_COUNTERS = (
    ("cgwatch_bucket_steps_total", "Steps (forwards) a graph served, by bucket (the target capture size)",
     "graph_steps"),
    ("cgwatch_padding_rows_total", "Padding rows computed by graphs (bucket - rows), by bucket", "padded"),
    ("cgwatch_graph_rows_total", "Rows computed by graphs, padding included (sum of the bucket), by bucket",
     "graph_rows"),
    ("cgwatch_rows_total", "Tokens computed by the forwards, unpadded (sum of rows), by bucket", "rows"),
    ("cgwatch_requests_total", "Requests in the forwards (sum of batch), by bucket", "requests"),
)


class _Histogram:
    """A histogram family labelled by mode: per mode, counts per bucket (not cumulative) and the sum."""

    def __init__(self, name: str, help_: str, bounds: tuple[float, ...]):
        self.name, self.help, self.bounds = name, help_, bounds
        self.les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, mode: str, v: float) -> None:
        counts = self.counts.get(mode)
        if counts is None:
            self.sums[mode] = 0.0
            counts = self.counts[mode] = [0] * (len(self.bounds) + 1)
        counts[bisect_left(self.bounds, v)] += 1   # le semantics: v <= bound
        self.sums[mode] += v

    def family(self) -> HistogramMetricFamily | None:
        if not self.counts:
            return None
        fam = HistogramMetricFamily(self.name, self.help, labels=["mode"])
        for mode in sorted(self.counts):
            counts, total = list(self.counts[mode]), self.sums.get(mode, 0.0)
            fam.add_metric([mode], list(zip(self.les, accumulate(counts))), sum_value=total)
        return fam


class Metrics:
    """The sink and its collector. Each value is written by one thread only (steps and events by the
    engine, samples by the sampler); a scrape copies what it reads."""

    def __init__(self, registry: CollectorRegistry | None = None, header: dict | None = None):
        self.registry = registry or CollectorRegistry()
        self.info = None
        self.stats = RunStats(window=0)   # the counters (cgwatch/aggregate.py); no percentile values
        self.step_s = _Histogram("cgwatch_step_seconds", "Step time (GPU time where measured, else host)",
                                 STEP_BUCKETS)
        self.launch_s = _Histogram("cgwatch_host_launch_seconds", "Host time from step start until the last "
                                   "launch returned", LAUNCH_BUCKETS)
        self.gap_s = _Histogram("cgwatch_gpu_gap_seconds", "GPU idle between back-to-back steps: the previous "
                                "step's end to this step's start (host work between steps the GPU waited for)", GAP_BUCKETS)
        self.plain: dict[str, float] = {}   # gauges, present once measured
        self.by_gpu: dict[str, dict[str, float]] = {name: {} for name, _, _ in _GPU_GAUGES.values()}
        self.by_bucket: dict[str, dict[str, float]] = {name: {} for name in _BUCKET_HELP}
        self.registry.register(self)
        self._server = None
        self._lock = threading.Lock()
        if header:
            self.set_header(header)

    def set_header(self, header: dict) -> None:
        """The run's header: cgwatch_info's labels and the kernels gauge. A session serves the metrics
        before the engine exists (so that a port in use fails first), and gives the header once it does."""
        model = header.get("model")
        self.info = {k: str((model.get("name") if k == "model" and isinstance(model, dict) else header.get(k)) or "")
                     for k in INFO_LABELS}
        self._kernels(header.get("kernels"))

    # -- the sink ----------------------------------------------------------------------------
    def __call__(self, rec: dict) -> None:
        kind = rec.get("type")
        if kind == R.STEP:
            self.stats.add_step(rec)
            mode = "graph" if rec["bucket"] is not None else "eager"
            self.step_s.observe(mode, R.step_ms(rec) / 1000.0)
            self.launch_s.observe(mode, rec["host_us"] / 1e6)
            if rec.get("gap_us") is not None:
                self.gap_s.observe(mode, rec["gap_us"] / 1e6)
        elif kind == R.SAMPLE:
            plain = self.plain
            for field, (name, scale, _) in _SAMPLE_GAUGES.items():
                v = rec.get(field)
                if v is not None:
                    plain[name] = v * scale
            gpus = rec.get("gpus")
            for g in gpus if isinstance(gpus, list) else [{"gpu": 0, **rec}]:
                for field, (name, scale, _) in _GPU_GAUGES.items():
                    v = g.get(field)
                    if v is not None:
                        self.by_gpu[name][str(g.get("gpu"))] = v * scale
            if isinstance(gpus, list):
                self.stats.ranks.add_sample(gpus)
        elif kind == R.EVENT:
            self.stats.add(rec)
            self._event(rec)

    def _event(self, rec: dict) -> None:
        kind = rec.get("kind")
        if kind == R.EV_CAPTURE:
            b = str(rec["bucket"])
            if rec.get("pool_bytes") is not None:
                self.by_bucket["cgwatch_bucket_graph_bytes"][b] = rec["pool_bytes"]
            if rec.get("capture_s") is not None:
                self.by_bucket["cgwatch_capture_seconds"][b] = rec["capture_s"]
            self.by_bucket["cgwatch_bucket_capture_failed"][b] = 0 if rec.get("ok") else 1
        elif kind == R.EV_CAPTURE_DONE:
            if rec.get("pool_bytes") is not None:
                self.plain["cgwatch_graph_pool_bytes"] = rec["pool_bytes"]
        elif kind == R.EV_RELEASE:   # the graphs are gone: their per-bucket numbers too
            for values in self.by_bucket.values():
                values.clear()
            self.stats.ranks.captures.clear()
            self.plain["cgwatch_graph_pool_bytes"] = 0
        elif kind in (R.EV_STATE, R.EV_MODE) and rec.get("mode") in ("graph", "eager"):
            self.plain["cgwatch_mode_graph"] = 1 if rec["mode"] == "graph" else 0
        if kind == R.EV_STATE:
            self._kernels(rec.get("kernels"))

    def _kernels(self, kind) -> None:
        if kind in ("fused", "plain"):
            self.plain["cgwatch_kernels_fused"] = 1 if kind == "fused" else 0

    # -- the collector (prometheus_client calls these) ---------------------------------------
    def describe(self):
        return []   # names are dynamic; nothing to check at registration

    def collect(self):
        stats = self.stats
        keys = stats.keys()   # a copy; the engine thread may add rows meanwhile
        rows = [(OVER_MAX if k is None else str(k), stats.buckets[k]) for k in keys]
        graph = sum(r.graph_steps for _, r in rows)
        yield _counter("cgwatch_steps_total", "Decode steps (forwards) by mode: graph (a graph served it) or eager",
                       ("mode",), [(("eager",), sum(r.eager for _, r in rows)), (("graph",), graph)])
        if rows:
            for name, help_, attr in _ROW_COUNTERS:
                yield _counter(name, help_, ("bucket",), [((b,), getattr(r, attr)) for b, r in rows])
            yield _counter("cgwatch_bucket_forwards_total", "Forwards by bucket (the target capture size), runtime "
                           "mode (FULL / PIECEWISE: a graph served it; NONE: eager) and phase (decode / mixed / "
                           "prefill)", ("bucket", "runtime_mode", "phase"),
                           [((b, m, ph), n) for b, r in rows for (m, ph), n in sorted(r.by_mode_phase.copy().items())])
            misses = [((b, reason), n) for b, r in rows for reason, n in sorted(r.misses.copy().items())]
            if misses:
                yield _counter("cgwatch_bucket_misses_total", "Eager steps, by the bucket that should have served "
                               "them (over_max above the largest) and reason (eager_mode: the user's choice, and "
                               "no_cuda: no graphs possible, are not graph-mode misses)", ("bucket", "reason"), misses)
        if self.info is not None:
            info = GaugeMetricFamily("cgwatch_info", "The run: backend, model, GPU, dtype, versions (value 1)",
                                     labels=list(INFO_LABELS))
            info.add_metric([self.info[k] for k in INFO_LABELS], 1)
            yield info
        yield _counter("cgwatch_tokens_total", "Tokens decoded", (), [((), stats.tokens)])
        alerts = stats.alerts.copy()
        if alerts:
            yield _counter("cgwatch_alerts_total", "Alerts", ("level",), [((k,), v) for k, v in sorted(alerts.items())])
        for h in (self.step_s, self.launch_s, self.gap_s):
            fam = h.family()
            if fam is not None:
                yield fam
        plain = self.plain.copy()
        if "cgwatch_graph_pool_bytes" not in plain and stats.no_cuda:
            plain["cgwatch_graph_pool_bytes"] = 0   # no CUDA: no graphs, so no graph memory (measured, not assumed)
        for name, help_ in _PLAIN_HELP.items():
            if name in plain:
                yield GaugeMetricFamily(name, help_, value=plain[name])
        for name, help_ in _BUCKET_HELP.items():
            values = self.by_bucket[name].copy()
            if values:
                g = GaugeMetricFamily(name, help_, labels=["bucket"])
                for bucket, v in sorted(values.items(), key=lambda kv: int(kv[0])):
                    g.add_metric([bucket], v)
                yield g
        for name, _, help_ in _GPU_GAUGES.values():
            values = self.by_gpu[name].copy()
            if values:
                g = GaugeMetricFamily(name, help_, labels=["gpu"])
                for gpu, v in sorted(values.items()):
                    g.add_metric([gpu], v)
                yield g
        yield from self._rank_families()

    def _rank_families(self):
        rk = self.stats.ranks
        steps = rk.steps.copy()
        if not steps:
            return
        ranks = sorted(steps)
        yield _counter("cgwatch_rank_steps_total", "Steps with a step time measured on the rank (tensor parallel)",
                       ("rank",), [((str(r),), steps[r]) for r in ranks])
        yield _counter("cgwatch_rank_step_seconds_total", "Sum of the rank's step times (GPU time where measured, "
                       "else host), seconds", ("rank",), [((str(r),), rk.ms_sum.get(r, 0.0) / 1000.0) for r in ranks])
        yield _counter("cgwatch_rank_slowest_steps_total", "Steps where the rank took longest (every rank measured)",
                       ("rank",), [((str(r),), rk.slowest.get(r, 0)) for r in ranks])
        yield _counter("cgwatch_rank_skew_seconds_total", "Sum over steps of slowest minus fastest rank, seconds",
                       (), [((), rk.skew_sum / 1000.0)])
        yield _counter("cgwatch_rank_skew_steps_total", "Steps in cgwatch_rank_skew_seconds_total", (),
                       [((), rk.skew_n)])
        pool = list(rk.pool or ())
        if any(isinstance(v, (int, float)) for v in pool):
            g = GaugeMetricFamily("cgwatch_rank_graph_pool_bytes", "The rank's graph pool after the last capture "
                                  "round, bytes", labels=["rank"])
            for r, v in enumerate(pool):
                if isinstance(v, (int, float)):
                    g.add_metric([str(r)], v)
            yield g
        caps = {b: rows.copy() for b, rows in rk.captures.copy().items()}
        if caps:
            g = GaugeMetricFamily("cgwatch_rank_bucket_capture_failed", "1 when the rank's own last capture of the "
                                  "bucket failed (the bucket then runs eager on every rank), else 0",
                                  labels=["rank", "bucket"])
            for b in sorted(caps):
                for r in sorted(caps[b]):
                    g.add_metric([str(r), str(b)], 0 if caps[b][r].get("ok") else 1)
            yield g

    # -- serving -----------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "127.0.0.1") -> "Metrics":
        """Serve /metrics over HTTP on addr:port (port 0: any free port; see ``url``)."""
        with self._lock:
            if self._server is None:
                try:
                    self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
                except OSError as e:
                    raise CgwatchError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}") from None
        return self

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server else None

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        host = self._server.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
