"""The command line on the CPU: real runs, and bad input -> one line, non-zero exit, no traceback."""

import json
import signal
import subprocess
import sys
import time

import pytest

from cgwatch.trace import read_trace

SMALL = ["--max-seq", "64", "--max-concurrency", "4", "--prompt-len", "uniform:4:8", "--output-len", "uniform:4:8"]


def cgwatch(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "cgwatch", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(out, *needles):
    assert out.returncode != 0
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cgwatch: ") and "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_headless_run_records_a_trace_that_report_reads(tmp_path):
    trace = tmp_path / "run.jsonl"
    out = cgwatch("run", "--headless", "--steps", "6", "--record", str(trace), "--at", "3:mark=hi", *SMALL)
    assert out.returncode == 0, out.stderr
    assert "completed: 6 steps" in out.stdout
    t = read_trace(trace)
    assert t.end["outcome"] == "completed" and t.end["steps"] == 6
    assert sum(r["type"] == "step" for r in t.records) == 6
    rep = cgwatch("report", str(trace))
    assert rep.returncode == 0 and "CUDA graphs need CUDA" in rep.stdout and "no_cuda" in rep.stdout
    js = json.loads(cgwatch("report", str(trace), "--json").stdout)
    assert js["totals"]["steps"] == 6 and js["totals"]["gpu_busy_pct"] is None


@pytest.mark.parametrize("args, needle", [
    (["run", "--steps", "2"], "needs a terminal"),
    (["replay", "--sample"], "needs a terminal"),
    (["run", "--headless", "--steps", "0"], "--steps"),
    (["run", "--headless", "--cudagraph-capture-sizes", "a,b"], "capture size"),
    (["run", "--headless", "--arrival", "bogus"], "bogus"),
    (["run", "--headless", "--prompt-len", "uniform:9:3"], "uniform:9:3"),
    (["run", "--headless", "--model", "no-such-model"], "unknown model"),
    (["run", "--headless", "--max-padding-ratio", "2"], "padding"),
    (["run", "--headless", "--at", "5:explode"], "explode"),
    (["run", "--headless", "--profile-steps", "9:3"], "profile-steps"),
    (["run", "--headless", "--device", "cuda"], "no CUDA"),
    (["run", "--headless", "--record", "/no/such/dir/t.jsonl"], "does not exist"),
    (["run", "--headless", "--arrival", "replay:/no/such/file"], "/no/such/file"),
    (["run", "--headless", "--dtype", "int3"], "--dtype"),
    (["run", "--no-such-flag"], "unrecognized"),
    (["report", "/no/such/trace"], "no such trace"),
    (["attach", "unix:/no/such.sock"], "cannot reach a daemon"),
    (["attach", "127.0.0.1:1"], "cannot reach a daemon"),
    (["replay", "/no/such/trace"], "no such trace"),
    (["daemon", "--listen", "0.0.0.0:7071"], "not loopback"),
    (["frobnicate"], "invalid choice"),
    (["run", "--headless", "--max-concurrency", "4", "--fail-capture-bucket", "9"], "--fail-capture-bucket 9"),
    (["run", "--headless", "--fail-capture-bucket", "0"], "no bucket can be 0"),
    (["run", "--headless", "--record", ""], "--record needs a file name"),
    (["run", "--headless", "--record", "-"], "not written to stdout"),
    (["run", "--headless", "--prometheus", "99999"], "a port is 0..65535"),
    (["run", "--headless", "--max-cudagraph-capture-size", "0"], "--max-cudagraph-capture-size must be >= 1"),
    (["run", "--headless", "--cudagraph-capture-sizes", ""], "--cudagraph-capture-sizes is empty"),
    (["run", "--headless", "--temperature", "-1"], "--temperature must be >= 0"),
    (["run", "--headless", "--mode", "graph", "--enforce-eager"], "contradict"),
    (["run", "--headless", "--max-concurrency", "100000", "--max-seq", "100000"], "the KV cache for 100000 slots"),
    (["daemon", "--listen", "127.0.0.1:abc"], "the port must be a number"),
    (["daemon", "--token", ""], "--token is empty"),
    (["replay"], "give a trace file or --sample"),
    (["recommend", "sample:llama1b_poisson_h100", "--memory-budget", "inf", "--max-buckets", "3"], "finite"),
    (["convert", "sample:llama1b_poisson_h100", "-"], "convert needs a file name"),
    (["convert", "sample:llama1b_poisson_h100", "out.csv"], "cgwatch export --format csv"),
    (["run", "--headless", "--at", "-1:eager"], "write --at=-1:eager"),
])
def test_bad_input_is_one_clear_line(args, needle):
    assert_one_line_error(cgwatch(*args), needle)


def test_record_does_not_replace_a_trace_unless_asked(tmp_path):
    trace = tmp_path / "t.jsonl"
    assert cgwatch("run", "--headless", "--steps", "2", "--record", str(trace), *SMALL).returncode == 0
    before = trace.read_bytes()
    assert_one_line_error(cgwatch("run", "--headless", "--steps", "3", "--record", str(trace), *SMALL),
                          f"{trace} exists", "--overwrite")
    assert trace.read_bytes() == before
    rotated = tmp_path / "r.jsonl"
    (tmp_path / "r.000.jsonl").write_bytes(before)       # a rotated run's first part
    assert_one_line_error(cgwatch("run", "--headless", "--steps", "3", "--record", str(rotated),
                                  "--rotate-size", "8KB", *SMALL), "r.000.jsonl exists")
    out = cgwatch("run", "--headless", "--steps", "3", "--record", str(trace), "--overwrite", *SMALL)
    assert out.returncode == 0 and read_trace(trace).end["steps"] == 3
    empty = tmp_path / "e.jsonl"
    empty.touch()                                         # an empty file (mktemp's) holds nothing: replaced
    assert cgwatch("run", "--headless", "--steps", "2", "--record", str(empty), *SMALL).returncode == 0


def test_attach_to_a_file_and_check_of_a_script_are_one_line(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("{}\n")
    assert_one_line_error(cgwatch("attach", str(trace)), "is a file, not a daemon's socket", "cgwatch replay")
    script = tmp_path / "script.py"
    script.write_text("import sys\nsys.exit(3)\ndef f(x):\n    return x\n")
    assert_one_line_error(cgwatch("check", f"{script}:f", "--example-inputs", "f32[4]"), "called sys.exit(3)")


def test_fail_capture_bucket_that_cannot_act_says_so(tmp_path):
    """On the CPU there are no graphs to fail: the run says so in its log instead of ignoring the flag."""
    trace = tmp_path / "f.jsonl"
    out = cgwatch("run", "--headless", "--steps", "2", "--fail-capture-bucket", "2", "--record", str(trace), *SMALL)
    assert out.returncode == 0, out.stderr
    notes = [r["message"] for r in read_trace(trace).records if r.get("kind") == "info"]
    assert "--fail-capture-bucket [2]: no CUDA graphs on the CPU" in notes


def test_report_on_corrupt_and_truncated_traces(tmp_path):
    trace = tmp_path / "t.jsonl"
    assert cgwatch("run", "--headless", "--steps", "4", "--record", str(trace), *SMALL).returncode == 0
    lines = trace.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(lines[:3]) + b"{not json\n" + b"".join(lines[3:]))
    offset = sum(len(l) for l in lines[:3])
    assert_one_line_error(cgwatch("report", str(bad)), f"byte {offset}")
    cut = tmp_path / "cut.jsonl"
    data = b"".join(lines[:-1])
    cut.write_bytes(data[:-7])                      # a crash mid-record
    rep = cgwatch("report", str(cut))
    assert rep.returncode == 0 and "truncated" in rep.stdout
    text = tmp_path / "x.jsonl"
    text.write_text("hello\n")
    assert_one_line_error(cgwatch("report", str(text)), "not a cgwatch trace")


def test_ctrl_c_closes_the_trace_cleanly(tmp_path):
    trace = tmp_path / "int.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "cgwatch", "run", "--headless", "--record", str(trace), *SMALL],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:                 # wait until steps are being recorded
        if trace.exists() and b'"type":"step"' in trace.read_bytes():
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "interrupted" in out
    t = read_trace(trace)
    assert t.end is not None and t.end["outcome"] == "interrupted" and t.truncated_at is None


def test_headless_describes_events_with_missing_numbers():
    from cgwatch import records as R
    from cgwatch.event_text import event_text
    done = R.event(R.EV_CAPTURE_DONE, 1.0, sizes=[1, 8], failed=[], pool=None, pool_bytes=None, seconds=None)
    assert event_text(done) == "captured [1, 8] in n/a s, n/a pool n/a"
    done.update(seconds=1.5, pool="shared", pool_bytes=2 ** 21, failed=[4])
    assert event_text(done) == "captured [1, 8], failed [4] in 1.50 s, shared pool 2.0 MiB"
    assert event_text(R.event(R.EV_RECAPTURE, 2.0, sizes=[1, 2], old=[1])) == "recapture [1, 2] (was [1])"
    assert event_text(R.event(R.EV_ALERT, 3.0, level="error", message="x")) == "ERROR: x"


@pytest.mark.parametrize("args, plain", [(["replay", "--sample"], "cgwatch report TRACE"),
                                         (["run", "--steps", "2"], "cgwatch run --headless")])
def test_term_dumb_gets_one_line_and_the_plain_command(args, plain):
    import os
    out = subprocess.run([sys.executable, "-m", "cgwatch", *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TERM": "dumb"})
    assert_one_line_error(out, "TERM=dumb", plain)


def test_stderr_redirected_says_the_tui_draws_there(tmp_path):
    """A terminal on stdin and stdout, stderr to a file (2>file): the one line says why and what to use."""
    import os
    import pty
    master, slave = pty.openpty()
    err = tmp_path / "err"
    try:
        with open(err, "w") as f:
            rc = subprocess.run([sys.executable, "-m", "cgwatch", "run", "--steps", "2", *SMALL], stdin=slave,
                                stdout=slave, stderr=f, timeout=120, env={**os.environ, "TERM": "xterm"}).returncode
        screen = os.read(master, 65536).decode()   # 2>/dev/null would swallow it: the terminal shows it too
    finally:
        os.close(slave)
        os.close(master)
    out = subprocess.CompletedProcess([], rc, "", err.read_text())
    assert_one_line_error(out, "draws its TUI on stderr", "redirected", "cgwatch run --headless")
    assert screen.strip() == out.stderr.strip()


def test_the_kv_slot_limit_reads_without_nested_brackets():
    out = cgwatch("run", "--headless", "--at", "1:recapture=1,99", *SMALL)
    assert_one_line_error(out, "at most 4 (--max-concurrency, the KV slots)")
    assert "))" not in out.stderr


def test_headless_lines_never_read_as_a_stalled_run():
    """The status line keeps the last step and batch across lines, and the closing line is printed only for
    steps since the last one (it used to print 'step 0 | 0.0 steps/s | ... batch 0' after a quiet second)."""
    import io

    from cgwatch import records as R
    from cgwatch.headless import StatusLine
    out = io.StringIO()
    s = StatusLine(out, every_s=3600)
    for i in range(3):
        s(R.step(i, 0.1 * i, 5, 8, 8, None, 50.0, 1.0, 5))
    s.print_line(s.since + 1.0)
    assert out.getvalue().startswith("step       3 |     3.0 steps/s |") and "batch   5" in out.getvalue()
    s.finish(s.since + 0.5)                     # no step since that line: nothing more
    assert len(out.getvalue().splitlines()) == 1
    s(R.step(3, 0.4, 6, 8, 8, None, 50.0, 1.0, 6))
    s.finish(s.since + 0.5)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("step       4 |     2.0 steps/s |") and "batch   6" in last


def test_headless_run_on_the_cpu_says_what_runs_and_what_launch_us_means(tmp_path):
    trace = tmp_path / "cpu.jsonl"
    out = cgwatch("run", "--headless", "--steps", "3", "--record", str(trace), *SMALL)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert ", mode eager (graphs need CUDA), " in first and "mode graph" not in first
    assert not any(line.startswith("step       0 |") or " 0.0 steps/s" in line for line in out.stdout.splitlines())
    rep = cgwatch("report", str(trace)).stdout
    assert "launch µs: host p50, graph/eager (no CUDA here: the host waits for every op, so it is the whole step)" \
        in " ".join(line.strip() for line in rep.splitlines())


def test_every_trace_command_reaches_the_bundled_traces(tmp_path):
    """sample:NAME wherever a trace goes (report, recommend and its --costs, export, replay), replay --sample NAME,
    and cgwatch samples lists the names; an unknown name is one line that lists them."""
    from cgwatch.samples import SAMPLES
    listing = cgwatch("samples")
    assert listing.returncode == 0 and all(f"sample:{name} " in listing.stdout for name in SAMPLES)
    rep = cgwatch("report", "sample:llama1b_poisson_h100")
    assert rep.returncode == 0 and "4,000" in rep.stdout and "NVIDIA H100 80GB HBM3" in rep.stdout
    assert cgwatch("report", "sample:llama1b_poisson_h100.jsonl", "--json").returncode == 0
    rec = cgwatch("recommend", "sample:llama1b_poisson_h100", "--costs", "sample:bench_llama1b_h100",
                  "--memory-budget", "256", "--max-buckets", "6")
    assert rec.returncode == 0 and rec.stdout.startswith("cgwatch recommend: llama-1b")
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # this checkout's cgwatch, from another cwd
    out = subprocess.run([sys.executable, "-m", "cgwatch", "export", "sample:bench_tiny_h100", "--format", "csv"],
                         capture_output=True, text=True, timeout=240, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0 and (tmp_path / "bench_tiny_h100.csv").exists(), out.stderr
    for args in (["replay", "--sample", "llama1b_live_h100"], ["replay", "sample:vllm026_llama1b_poisson_h200"]):
        assert_one_line_error(cgwatch(*args), "needs a terminal")   # found: only the terminal is missing
    assert_one_line_error(cgwatch("report", "sample:nope"), "no bundled trace 'nope'", "llama1b_live_h100")
    assert_one_line_error(cgwatch("replay", "--sample", "nope"), "no bundled trace 'nope'")
