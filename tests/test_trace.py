import json
import threading
import time

import pytest

from cgwatch import records as R
from cgwatch.errors import CgwatchError
from cgwatch.trace import (VERSION, TraceError, TraceWriter, follow_trace, iter_records,
                           read_header, read_trace)

HEADER = {"model": "tiny", "gpu": None, "torch": "2.13", "config": {"sizes": [1, 2, 4]}}


def _records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        if i % 10 == 0:
            out.append(R.event(R.EV_MARK, i * 0.01, text=f"mark {i}"))
        out.append(R.step(i, i * 0.01, 3, 4, 4, None, 40.5, 1.25, 3))
    return out


def _write(path, recs, summary=None, close=True) -> TraceWriter:
    w = TraceWriter(path, HEADER)
    for r in recs:
        w.write(r)
    if close:
        w.close(summary)
    return w


def test_round_trip(tmp_path):
    path = tmp_path / "run.jsonl"
    recs = _records(1000)
    _write(path, recs, {"steps": 1000})
    tr = read_trace(path)
    assert tr.header == {"type": "header", "format": "cgwatch-trace", "version": VERSION, **HEADER}
    assert tr.records == recs
    assert tr.end["type"] == "end" and tr.end["steps"] == 1000 and tr.end["t"] >= 0
    assert tr.truncated_at is None and tr.warnings() == [] and tr.path == str(path)
    # compact lines, header first, end last
    lines = path.read_text().splitlines()
    assert len(lines) == len(recs) + 2 and ", " not in lines[1] and '": ' not in lines[1]
    assert json.loads(lines[-1])["type"] == "end"
    assert list(iter_records(path)) == recs + [tr.end]
    assert read_header(path) == tr.header


def test_close_idempotent_and_context_manager(tmp_path):
    path = tmp_path / "a.jsonl"
    with TraceWriter(path, HEADER) as w:
        w.write(R.step(0, 0.0, 1, 1, 1, None, 10.0, None, 1))
        w.close({"ok": True})
        w.close({"ok": False})
        w.write(R.step(1, 0.1, 1, 1, 1, None, 10.0, None, 1))  # dropped after close
    tr = read_trace(path)
    assert tr.end["ok"] is True and len(tr.records) == 1

    path = tmp_path / "b.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(path, HEADER):
            raise KeyboardInterrupt
    tr = read_trace(path)
    assert tr.end["error"] == "KeyboardInterrupt"
    assert tr.warnings() == ["the run ended on an error: KeyboardInterrupt"]


def test_header_cannot_override_format(tmp_path):
    w = TraceWriter(tmp_path / "h2.jsonl", {"type": "x", "version": 99, "model": "m"})
    w.close()
    h = read_trace(tmp_path / "h2.jsonl").header
    assert (h["type"], h["version"], h["model"]) == ("header", VERSION, "m")


def test_unwritable_paths(tmp_path):
    missing = tmp_path / "nope" / "deeper"
    with pytest.raises(CgwatchError, match="does not exist") as e:
        TraceWriter(missing / "t.jsonl", HEADER)
    assert str(missing) in str(e.value)
    with pytest.raises(CgwatchError, match="cannot write trace"):
        TraceWriter(tmp_path, HEADER)  # a directory


def test_readable_while_written(tmp_path):
    path = tmp_path / "live.jsonl"
    w = TraceWriter(path, HEADER)
    tr = read_trace(path)  # header is flushed at once
    assert tr.header["model"] == "tiny" and tr.records == [] and tr.end is None
    assert tr.warnings() == ["no end record: the run did not finish cleanly"]
    recs = _records(50)
    for r in recs:
        w.write(r)
    w.flush()
    tr = read_trace(path)
    assert tr.records == recs and tr.end is None and tr.truncated_at is None
    w.close()


def test_writes_flush_periodically(tmp_path, monkeypatch):
    import cgwatch.trace as T
    monkeypatch.setattr(T, "FLUSH_INTERVAL_S", 0.0)  # every write flushes
    path = tmp_path / "p.jsonl"
    w = TraceWriter(path, HEADER)
    w.write(R.step(0, 0.0, 1, 1, 1, None, 10.0, None, 1))
    assert len(read_trace(path).records) == 1
    w.close()


def test_truncated_tail(tmp_path):
    path = tmp_path / "t.jsonl"
    recs = _records(20)
    _write(path, recs, close=False).flush()
    data = path.read_bytes()
    lines = data.split(b"\n")
    # keep the header and 10 whole records, then half of the next line
    keep = b"\n".join(lines[:11]) + b"\n"
    cut = keep + lines[11][: len(lines[11]) // 2]
    path.write_bytes(cut)
    tr = read_trace(path)
    assert tr.records == recs[:10]
    assert tr.truncated_at == len(keep)
    assert tr.end is None
    assert tr.warnings() == [f"trace truncated at byte {len(keep)} after 10 records "
                             "(the run did not close it: crash or kill?)"]
    assert list(iter_records(path)) == recs[:10]
    # a whole JSON object lacking its newline is still a truncated tail
    path.write_bytes(keep + lines[11])
    tr = read_trace(path)
    assert tr.records == recs[:10] and tr.truncated_at == len(keep)


def test_corrupt_middle_line(tmp_path):
    path = tmp_path / "c.jsonl"
    _write(path, _records(20))
    lines = path.read_bytes().split(b"\n")
    bad_index = 7  # 0-based line index, line number 8
    lines[bad_index] = lines[bad_index][:15] + b"#" + lines[bad_index][16:]
    path.write_bytes(b"\n".join(lines))
    offset = sum(len(x) + 1 for x in lines[:bad_index])
    with pytest.raises(TraceError) as e:
        read_trace(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: corrupt record at byte {offset} (line 8): invalid JSON")
    assert isinstance(e.value, CgwatchError)


@pytest.mark.parametrize("line, reason", [(b"[1, 2]", "not a JSON object"),
                                          (b'{"t": 1}', "no 'type'")])
def test_corrupt_not_a_record(tmp_path, line, reason):
    path = tmp_path / "c.jsonl"
    _write(path, _records(3))
    lines = path.read_bytes().split(b"\n")
    lines.insert(2, line)
    path.write_bytes(b"\n".join(lines))
    offset = len(lines[0]) + len(lines[1]) + 2
    with pytest.raises(TraceError, match=rf"corrupt record at byte {offset} \(line 3\): .*{reason}"):
        read_trace(path)


def test_corrupt_last_whole_line_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    _write(path, _records(3), close=False).flush()
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"type":"step","i":\n')
    with pytest.raises(TraceError, match=f"corrupt record at byte {size} "):
        read_trace(path)


def test_unknown_types_kept_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "u.jsonl"
    w = _write(path, [{"type": "future_thing", "x": 1}], close=False)
    w.flush()
    with open(path, "ab") as f:
        f.write(b"\n")
    w.close()
    tr = read_trace(path)
    assert tr.records == [{"type": "future_thing", "x": 1}] and tr.end is not None


def test_not_a_trace_and_missing(tmp_path):
    with pytest.raises(TraceError, match="no such trace file: .*missing.jsonl"):
        read_trace(tmp_path / "missing.jsonl")
    for content in (b"", b"hello\n", b'{"type":"step"}\n', b'{"type":"header","format":"x","version":1}\n'):
        p = tmp_path / "x.jsonl"
        p.write_bytes(content)
        with pytest.raises(TraceError) as e:
            read_trace(p)
        assert str(e.value) == f"{p} is not a cgwatch trace (bad header at byte 0)"


def test_newer_version(tmp_path):
    p = tmp_path / "new.jsonl"
    p.write_text(json.dumps({"type": "header", "format": "cgwatch-trace", "version": VERSION + 1}) + "\n")
    with pytest.raises(TraceError) as e:
        read_trace(p)
    msg = str(e.value)
    assert f"version {VERSION + 1}" in msg and f"version {VERSION}" in msg and "newer" in msg


def test_thread_safety(tmp_path):
    path = tmp_path / "mt.jsonl"
    w = TraceWriter(path, HEADER)
    n = 5000

    def worker(tag: str) -> None:
        for i in range(n):
            w.write(R.event(R.EV_INFO, i * 1e-3, src=tag, n=i, pad="x" * (i % 97)))

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in ("engine", "sampler")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    for line in path.read_text().splitlines():
        json.loads(line)
    tr = read_trace(path)
    assert len(tr.records) == 2 * n
    for tag in ("engine", "sampler"):
        assert [r["n"] for r in tr.records if r["src"] == tag] == list(range(n))


def test_follow_trace_sees_appended_records(tmp_path):
    path = tmp_path / "f.jsonl"
    w = TraceWriter(path, HEADER)
    recs = _records(30)

    def writer() -> None:
        for r in recs:
            w.write(r)
            w.flush()
            time.sleep(0.002)
        w.close({"steps": 30})

    seen: list[dict] = []
    th = threading.Thread(target=writer)
    th.start()
    deadline = time.monotonic() + 20
    for rec in follow_trace(path, poll_s=0.01, stop=lambda: time.monotonic() > deadline):
        seen.append(rec)
    th.join()
    assert seen[0]["type"] == "header"
    assert seen[1:-1] == recs
    assert seen[-1]["type"] == "end" and seen[-1]["steps"] == 30


def test_follow_trace_partial_line_and_stop(tmp_path):
    path = tmp_path / "f.jsonl"
    w = TraceWriter(path, HEADER)
    w.write(R.step(0, 0.0, 1, 1, 1, None, 10.0, None, 1))
    w.flush()
    with open(path, "ab") as f:
        f.write(b'{"type":"step","i":1')  # half a line: not yielded
    polls = []
    got = list(follow_trace(path, poll_s=0.001, stop=lambda: polls.append(1) or len(polls) > 3))
    assert [r["type"] for r in got] == ["header", "step"] and got[1]["i"] == 0
    w.close()
    with pytest.raises(TraceError, match="no such trace file"):
        next(follow_trace(tmp_path / "none.jsonl"))


def test_a_header_without_a_number_version_says_so(tmp_path):
    base = {"type": "header", "format": "cgwatch-trace"}
    for head, msg in (({**base, "version": "1"}, 'format version "1" is not a whole number'),
                      (base, "it has no format version"), ({**base, "version": 0}, "format version 0 is not")):
        p = tmp_path / "v.jsonl"
        p.write_text(json.dumps(head) + "\n")
        with pytest.raises(TraceError) as e:
            read_trace(p)
        assert str(e.value).startswith(f"{p}: bad trace header: ") and msg in str(e.value)
