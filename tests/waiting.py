"""Waiting in tests without flaking on a loaded 2-core CI machine: generous deadlines, short polls."""

import time


def wait_until(cond, timeout: float = 60.0, what: str = "condition", every: float = 0.01) -> None:
    """Poll ``cond`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def read_snapshot(conn, timeout: float = 10.0) -> list[dict]:
    """The messages of a daemon's snapshot, snapshot_begin to snapshot_end (exclusive), checked against
    the count snapshot_begin announced."""
    begin = conn.recv(timeout)
    assert begin["type"] == "snapshot_begin"
    out = []
    while (msg := conn.recv(timeout))["type"] != "snapshot_end":
        out.append(msg)
    assert len(out) == begin["records"]
    return out
