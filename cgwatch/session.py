"""One run from its first record to its end record, with its sinks: ``cgwatch run --headless``
(cli.py), the daemon (daemon.py) and the bench (bench.py) all go through a ``Session``.

``Session.open(build, ...)`` binds the Prometheus port (a port in use fails before anything loads),
builds the engine on a Fanout (``build(emit)``), takes its header and adds the sinks in their order:
the trace file, the Prometheus metrics, then a daemon's socket (a caller adds its own views after
them: the status line). ``run(loop)`` runs the engine and settles
the outcome (completed, interrupted or error); ``end()`` closes the engine and gives the trace and
the daemon's clients the end record; ``close()`` (also on leaving ``with``) ends the run if nobody
did, then stops the daemon and the metrics. Whatever fails, and wherever, the trace keeps what was
recorded and gets its end record, and the engine (with any rank processes) is closed.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from cgwatch import records as R
from cgwatch.errors import CgwatchError
from cgwatch.sinks import Fanout, Sink

T = TypeVar("T")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def stopped_error(what: str, e: BaseException, trace: str | None = None) -> CgwatchError:
    """The one line to end on after a crash inside the run (``raise stopped_error(...) from e``)."""
    return CgwatchError(f"{what} stopped by {type(e).__name__}: {first_line(e)}"
                        + (f" (trace so far: {trace})" if trace else ""))


class Session:
    """The engine (anything with header(), close() and now()), its Fanout, and the sinks it feeds."""

    def __init__(self, engine, fanout: Fanout, what: str = "run"):
        self.engine, self.fanout, self.what = engine, fanout, what
        self.header: dict = {}
        self.writer = self.metrics = self.daemon = None
        self.outcome = "completed"
        self.end_fields: dict = {}          # what the trace's end record gets besides the summary
        self.summary: dict | None = None    # the engine's summary with outcome and t, once ended
        self._ended = False

    @classmethod
    def open(cls, build: Callable[[Sink], object], *, record: str | None = None, rotate: dict | None = None,
             prometheus: int | None = None, daemon=None, what: str = "run", end_fields: dict | None = None) -> Session:
        """Build the engine and open its sinks. ``rotate``: TraceWriter's rotation arguments; ``daemon``:
        a bound daemon.Daemon (started by the caller, closed by the session). If anything fails here,
        what was built or opened is closed again, the daemon too."""
        fanout = Fanout()
        s = metrics = None
        try:
            if prometheus is not None:   # bound first: a port in use fails before the model loads and the trace opens
                from cgwatch.metrics import Metrics
                metrics = Metrics().serve(prometheus)
            s = cls(build(fanout), fanout, what)
            s.daemon, s.end_fields, s.metrics = daemon, dict(end_fields or {}), metrics
            s.header = s.engine.header()
            if record:
                from cgwatch.trace import TraceWriter
                s.writer = TraceWriter(record, s.header, **(rotate or {}))
                fanout.add(s.writer.write)
            if metrics is not None:
                metrics.set_header(s.header)
                fanout.add(metrics)
        except BaseException:
            if s is not None:   # a bad --record: the engine stops too
                s.outcome = "error"
                s.close()
            else:
                if daemon is not None:
                    daemon.close()
                if metrics is not None:
                    metrics.close()
            raise
        if daemon is not None:
            fanout.add(daemon.publish)
        if hasattr(s.engine, "on_abort"):   # a lost rank the engine's thread cannot see: end trace and stream
            s.engine.on_abort = s._end_sinks
        return s

    def now(self) -> float:
        return self.engine.now()

    def run(self, loop: Callable[[], T], stop: threading.Event | None = None) -> T:
        """Run the engine (``loop()``, its result returned). The outcome: interrupted when ``stop`` was
        set or on Ctrl-C; error on any other exception, which gets an error alert in the run and goes
        on up (the caller ends the run: ``end()``, or leaving ``with``)."""
        try:
            result = loop()
        except KeyboardInterrupt:
            self.outcome = "interrupted"
            raise
        except BaseException as e:
            self.outcome = "error"
            self.fanout(R.alert(self.now(), f"{self.what} stopped by {type(e).__name__}: {first_line(e)}",
                                level="error"))
            raise
        if stop is not None and stop.is_set():
            self.outcome = "interrupted"
        return result

    def end(self) -> dict | None:
        """Close the engine (once); the trace and the daemon's clients get the end record. The summary."""
        if not self._ended:
            self._ended = True
            self.summary = self.engine.close() | {"outcome": self.outcome, "t": round(self.now(), 6)}
            self._end_sinks(self.summary | self.end_fields)
        return self.summary

    def _end_sinks(self, summary: dict) -> None:
        if self.writer is not None:
            self.writer.close(summary)
        if self.daemon is not None:
            self.daemon.publish({"type": R.END, **summary})

    def close(self) -> None:
        """End the run if nobody did, then stop serving: the daemon (its clients get what is queued
        first), the metrics. A trace the end did not reach (the engine's close failed) still gets an
        end record."""
        try:
            self.end()
        finally:
            if self.writer is not None:
                self.writer.close({"outcome": "error"})   # a no-op after the end record
            if self.daemon is not None:
                self.daemon.close()
            if self.metrics is not None:
                self.metrics.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.outcome == "completed":   # raised outside run()
            self.outcome = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "error"
        self.close()
