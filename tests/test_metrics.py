"""Prometheus metrics from a synthetic record sequence: exact values, n/a stays unset, HTTP scrape."""

import urllib.request

import pytest

from cgwatch import records as R
from cgwatch.metrics import Metrics


def step(i, batch, target, bucket, reason=None, host_us=50.0, gpu_ms=None):
    return R.step(i, i * 0.01, batch, target, bucket, reason, host_us, gpu_ms, batch)


def sample(**values):
    base = {"gpu_util": None, "mem_used_bytes": None, "power_w": None, "sm_clock_mhz": None, "cpu_pct": None,
            "gpu_busy": None}
    return {"type": R.SAMPLE, "t": 0.0, **base, **values}


RUN = [
    R.event(R.EV_STATE, 0.0, mode="graph", paused=False),
    R.event(R.EV_CAPTURE, 0.1, bucket=8, ok=True, capture_s=0.05, pool_bytes=4096, nvml_bytes=None),
    R.event(R.EV_CAPTURE, 0.2, bucket=16, ok=True, capture_s=0.07, pool_bytes=None, nvml_bytes=None),
    R.event(R.EV_CAPTURE_DONE, 0.3, sizes=[8, 16], failed=[], pool_bytes=8192, seconds=0.2, pool="shared"),
    step(0, 6, 8, 8, gpu_ms=2.0),                        # graph, 2 padding rows
    {**step(1, 8, 8, 8, gpu_ms=4.0), "gap_us": 3.0},     # graph, exact fit, back to back
    step(2, 9, 16, None, R.REASON_PADDING, host_us=900.0, gpu_ms=20.0),
    step(3, 40, None, None, R.REASON_OVER_MAX, host_us=1500.0),   # CPU-style: host time is the step time
    R.alert(1.0, "careful"),
    R.alert(1.1, "careful again"),
    R.alert(1.2, "broken", level="error"),
    sample(gpu_util=87, mem_used_bytes=10 * 2**30, power_w=300.5, sm_clock_mhz=1980, cpu_pct=150.0, gpu_busy=0.5),
    sample(),                                            # all n/a: the last measurements stay
    R.event(R.EV_MODE, 2.0, mode="eager"),
    {**step(4, 3, 4, None, R.REASON_EAGER_MODE, gpu_ms=1.0), "gap_us": 7000.0},
]


@pytest.fixture
def metrics():
    m = Metrics()
    for rec in RUN:
        m(rec)
    return m


def value(m, name, **labels):
    return m.registry.get_sample_value(name, labels)


def test_counters_are_exact(metrics):
    m = metrics
    assert value(m, "cgwatch_steps_total", mode="graph") == 2
    assert value(m, "cgwatch_steps_total", mode="eager") == 3
    assert value(m, "cgwatch_bucket_steps_total", bucket="8") == 2
    assert value(m, "cgwatch_bucket_steps_total", bucket="16") == 0     # every row seen, 0 included
    assert value(m, "cgwatch_bucket_steps_total", bucket="over_max") == 0
    assert value(m, "cgwatch_bucket_misses_total", bucket="16", reason="padding_ratio") == 1
    assert value(m, "cgwatch_bucket_misses_total", bucket="over_max", reason="over_max") == 1
    assert value(m, "cgwatch_bucket_misses_total", bucket="4", reason="eager_mode") == 1
    assert value(m, "cgwatch_padding_rows_total", bucket="8") == 2
    assert value(m, "cgwatch_graph_rows_total", bucket="8") == 16      # rows the graphs computed, padding in
    assert value(m, "cgwatch_rows_total", bucket="8") == 14            # tokens computed, unpadded
    assert value(m, "cgwatch_requests_total", bucket="8") == 14
    assert value(m, "cgwatch_padding_rows_total", bucket="16") == 0
    assert value(m, "cgwatch_rows_total", bucket="16") == 9 and value(m, "cgwatch_rows_total", bucket="over_max") == 40
    assert value(m, "cgwatch_bucket_forwards_total", bucket="8", runtime_mode="FULL", phase="decode") == 2
    assert value(m, "cgwatch_bucket_forwards_total", bucket="16", runtime_mode="NONE", phase="decode") == 1
    assert value(m, "cgwatch_bucket_forwards_total", bucket="8", runtime_mode="NONE", phase="decode") is None
    assert value(m, "cgwatch_tokens_total") == 6 + 8 + 9 + 40 + 3
    assert value(m, "cgwatch_alerts_total", level="warn") == 2
    assert value(m, "cgwatch_alerts_total", level="error") == 1


def test_histograms_use_step_time_in_seconds(metrics):
    m = metrics
    assert value(m, "cgwatch_step_seconds_count", mode="graph") == 2
    assert value(m, "cgwatch_step_seconds_sum", mode="graph") == pytest.approx(0.006)
    assert value(m, "cgwatch_step_seconds_bucket", mode="graph", le="0.002") == 1
    assert value(m, "cgwatch_step_seconds_bucket", mode="graph", le="0.005") == 2
    # eager: 20 ms (GPU), 1.5 ms (host time, no GPU time), 1 ms (GPU)
    assert value(m, "cgwatch_step_seconds_sum", mode="eager") == pytest.approx(0.0225)
    assert value(m, "cgwatch_step_seconds_bucket", mode="eager", le="0.002") == 2
    assert value(m, "cgwatch_host_launch_seconds_count", mode="eager") == 3
    assert value(m, "cgwatch_host_launch_seconds_sum", mode="graph") == pytest.approx(100e-6)
    # the GPU gap: only steps that have one (back to back)
    assert value(m, "cgwatch_gpu_gap_seconds_count", mode="graph") == 1
    assert value(m, "cgwatch_gpu_gap_seconds_sum", mode="graph") == pytest.approx(3e-6)
    assert value(m, "cgwatch_gpu_gap_seconds_bucket", mode="graph", le="2e-06") == 0
    assert value(m, "cgwatch_gpu_gap_seconds_bucket", mode="graph", le="5e-06") == 1
    assert value(m, "cgwatch_gpu_gap_seconds_bucket", mode="eager", le="0.005") == 0
    assert value(m, "cgwatch_gpu_gap_seconds_bucket", mode="eager", le="0.01") == 1


def test_gauges_hold_the_last_measurement_and_none_changes_nothing(metrics):
    m = metrics
    assert value(m, "cgwatch_graph_pool_bytes") == 8192
    assert value(m, "cgwatch_bucket_graph_bytes", bucket="8") == 4096
    assert value(m, "cgwatch_bucket_graph_bytes", bucket="16") is None   # unknown: not exported
    assert value(m, "cgwatch_capture_seconds", bucket="16") == 0.07
    assert value(m, "cgwatch_gpu_utilization_ratio", gpu="0") == pytest.approx(0.87)
    assert value(m, "cgwatch_gpu_memory_used_bytes", gpu="0") == 10 * 2**30
    assert value(m, "cgwatch_gpu_power_watts", gpu="0") == 300.5
    assert value(m, "cgwatch_sm_clock_hertz", gpu="0") == 1.98e9
    assert value(m, "cgwatch_gpu_busy_ratio") == 0.5
    assert value(m, "cgwatch_process_cpu_ratio") == 1.5
    assert value(m, "cgwatch_mode_graph") == 0
    assert value(m, "cgwatch_kernels_fused") is None            # never said (a vLLM run, an old trace)
    m(R.event(R.EV_STATE, 2.5, mode="eager", kernels="fused"))
    assert value(m, "cgwatch_kernels_fused") == 1
    m(R.event(R.EV_STATE, 2.6, mode="eager", kernels="plain"))
    assert value(m, "cgwatch_kernels_fused") == 0
    assert value(Metrics(header={"kernels": "fused", "model": {"name": "tiny"}}), "cgwatch_kernels_fused") == 1
    m(R.event(R.EV_RELEASE, 3.0, freed_bytes=8192))   # graphs released: their numbers go with them
    assert value(m, "cgwatch_bucket_graph_bytes", bucket="8") is None
    assert value(m, "cgwatch_graph_pool_bytes") == 0


def test_never_measured_is_absent_not_zero():
    m = Metrics()
    m(sample())
    m(step(0, 2, 2, None, R.REASON_NO_CUDA, host_us=80_000.0))   # a CPU run: no GPU numbers at all
    for name in ("cgwatch_gpu_utilization_ratio", "cgwatch_gpu_memory_used_bytes", "cgwatch_gpu_power_watts",
                 "cgwatch_sm_clock_hertz", "cgwatch_gpu_busy_ratio", "cgwatch_mode_graph"):
        assert value(m, name) is None, name
    assert value(m, "cgwatch_steps_total", mode="eager") == 1


def test_a_cpu_run_has_its_bucket_counters_the_pool_and_step_times_in_range():
    """On the CPU (no CUDA) no graph serves a step: the per-bucket counters are still there (at 0), the graph
    pool is known to be empty (0 bytes, not n/a), and step times of 80 ms .. 3 s land in finite buckets."""
    m = Metrics()
    for i, host_us in enumerate((80_000.0, 600_000.0, 3_000_000.0)):
        m(step(i, 2, 2, None, R.REASON_NO_CUDA, host_us=host_us))
    assert value(m, "cgwatch_bucket_steps_total", bucket="2") == 0
    assert value(m, "cgwatch_padding_rows_total", bucket="2") == 0
    assert value(m, "cgwatch_rows_total", bucket="2") == 6
    assert value(m, "cgwatch_graph_pool_bytes") == 0
    assert value(m, "cgwatch_step_seconds_bucket", mode="eager", le="0.1") == 1
    assert value(m, "cgwatch_step_seconds_bucket", mode="eager", le="1.0") == 2
    assert value(m, "cgwatch_step_seconds_bucket", mode="eager", le="5.0") == 3
    assert value(m, "cgwatch_host_launch_seconds_bucket", mode="eager", le="5.0") == 3


def test_http_scrape(metrics):
    metrics.serve(0)
    try:
        assert metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"
        with urllib.request.urlopen(metrics.url, timeout=10) as r:
            text = r.read().decode()
        assert 'cgwatch_bucket_steps_total{bucket="8"} 2.0' in text
        assert "# TYPE cgwatch_gpu_power_watts gauge" in text and 'cgwatch_gpu_power_watts{gpu="0"} 300.5' in text
        assert 'cgwatch_step_seconds_bucket{le="0.002",mode="graph"} 1.0' in text
    finally:
        metrics.close()
    assert metrics.url is None
