"""The Prometheus side of a fleet: the shipped rules pass promtool (syntax and their unit tests), and a
real Prometheus server scrapes a running daemon, evaluates the rules over it, and answers every query
of the shipped Grafana dashboard. Skipped where promtool / prometheus are not installed (.ci/run
installs Debian's prometheus package)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "cgwatch.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "cgwatch.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "cgwatch-dashboard.json"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian: prometheus)")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs prometheus (Debian package)")


@needs_promtool
def test_the_rules_are_valid():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_the_rules_unit_tests_pass():
    """Down, a failed capture, hit rate (the user's eager steps are not misses), padding waste, GPU idle."""
    out = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                         timeout=120, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_uses_only_metrics_cgwatch_exports():
    from cgwatch import metrics
    src = Path(metrics.__file__).read_text()
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = RULES.read_text()
    import re
    for e in exprs:
        for name in re.findall(r"\b(cgwatch_[a-z_]+?)(?:_bucket|_sum|_count)?\b(?=[{\[( ])", e):
            assert f'"{name}"' in src or name in rules, (name, e)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int, q: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = pred()
            if last:
                return last
        except OSError as e:   # not up yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@needs_prometheus
def test_a_real_prometheus_scrapes_a_daemon_and_answers_the_dashboard():
    d = Path(tempfile.mkdtemp(prefix="cgwprom", dir="/tmp"))
    mport, pport = _free_port(), _free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cgwatch", "daemon", "--model", "tiny", "--max-seq", "64", "--max-concurrency", "4",
         "--prompt-len", "uniform:4:8", "--output-len", "uniform:4:16", "--arrival", "fixed:3",
         "--cudagraph-capture-sizes", "1,2", "--listen", f"unix:{d}/d.sock", "--prometheus", str(mport)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    prom = None
    try:
        _wait(lambda: "metrics on" in daemon.stdout.readline(), 120, "the daemon's metrics line")
        shutil.copy(RULES, d / RULES.name)
        (d / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{RULES.name}]\n"
            f"scrape_configs:\n  - job_name: cgwatch\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n")
        prom = subprocess.Popen(["prometheus", f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{pport}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def scraped():
            res = _query(pport, 'cgwatch_steps_total{job="cgwatch"}')["data"]["result"]
            return sum(float(r["value"][1]) for r in res) > 0 and res
        _wait(scraped, 120, "Prometheus to scrape the daemon's steps")
        up = _query(pport, 'up{job="cgwatch"}')["data"]["result"]
        assert [r["value"][1] for r in up] == ["1"]
        info = _query(pport, "cgwatch_info")["data"]["result"]
        assert info and info[0]["metric"]["model"] == "tiny" and info[0]["metric"]["backend"] == "pytorch"
        with urllib.request.urlopen(f"http://127.0.0.1:{pport}/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) == 9 and all(rule["health"] in ("ok", "unknown") for rule in rules), rules
        # every dashboard query parses and runs against the real server
        dash = json.loads(DASHBOARD.read_text())
        for p in dash["panels"]:
            for t in p["targets"]:
                q = t["expr"].replace("$instance", ".*").replace("$bucket", ".*")
                assert _query(pport, q)["status"] == "success", (p["title"], q)
    finally:
        for proc in (prom, daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(d, ignore_errors=True)
