"""The daemon's wire protocol: newline-delimited JSON over a stream socket (docs/PROTOCOL.md).

One JSON object per line, UTF-8, ``\\n``-terminated, at most ``MAX_LINE`` bytes. The server sends
``hello``, a snapshot (``snapshot_begin``, the trace header, retained records, ``snapshot_end``),
then every record the engine emits, plus ``ack`` and ``dropped`` messages. A client sends commands:
``{"cmd": ..., "value": ..., "id": ..., "token": ...}``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
from typing import Callable

from cgwatch import jsonl
from cgwatch.errors import CgwatchError

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20   # bytes per line, newline excluded

# Server -> client message types (records keep their own: header, step, sample, event, ...)
HELLO = "hello"
SNAPSHOT_BEGIN = "snapshot_begin"
SNAPSHOT_END = "snapshot_end"
DROPPED = "dropped"
AGGREGATE = "aggregate"            # in the snapshot: the run's numbers so far (aggregate.RunStats.state)
AGGREGATE_ROW = "aggregate_row"    # ... then one per bucket row


class ProtocolError(CgwatchError):
    """A line that is not a valid message."""


class LineTooLong(ProtocolError):
    """A line over the limit: it is discarded (the reader skips to the next newline)."""


MAX_NUMBER = 64      # characters of one JSON number (an integer over Python's 4,300 digits would raise)

_encode = jsonl.dumps


def encode(msg: dict) -> bytes:
    """One message -> one line (compact JSON, ASCII, newline-terminated)."""
    return (_encode(msg) + "\n").encode("ascii")


class _BadNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER:
        raise _BadNumber(f"a number of {len(text):,} characters (at most {MAX_NUMBER})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER:
        raise _BadNumber(f"a number of {len(text):,} characters (at most {MAX_NUMBER})")
    v = float(text)
    if v in (math.inf, -math.inf):
        raise _BadNumber(f"the number {text} is out of range")
    return v


def _parse_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not JSON")


# strict JSON, numbers bounded at parse: no NaN / Infinity, no 5,000-digit integers
_decode = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant).decode


def decode(line: bytes) -> dict:
    """One line (without its newline) -> a JSON object; ProtocolError otherwise (never another exception)."""
    try:
        obj = _decode(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except _BadNumber as e:
        raise ProtocolError(f"invalid JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply") from None
    except ValueError as e:   # anything else the decoder refuses: one short line
        raise ProtocolError(f"invalid JSON: {str(e)[:80]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"not a JSON object ({type(obj).__name__})")
    return obj


class LineReader:
    """Reads whole lines from ``recv`` (e.g. ``sock.recv``), keeping at most ``limit`` bytes of one line.

    ``readline()`` returns a line without its newline, or None at end of stream (a partial last
    line is dropped). A line over the limit raises LineTooLong as soon as the limit is passed; the
    rest of that line is skipped and the next call goes on with the following line. A timeout
    raised by ``recv`` propagates and loses nothing: call again to continue.
    """

    def __init__(self, recv: Callable[[int], bytes], limit: int = MAX_LINE, chunk: int = 1 << 16):
        self._recv, self.limit, self._chunk = recv, limit, chunk
        self._buf = bytearray()
        self._scanned = 0        # bytes of _buf already searched for a newline
        self._skipping = False   # inside an over-long line

    def readline(self) -> bytes | None:
        buf = self._buf
        while True:
            if self._skipping:
                nl = buf.find(b"\n")
                if nl < 0:
                    buf.clear()
                else:
                    del buf[:nl + 1]   # front deletion of a bytearray is cheap
                    self._skipping = False
                    continue
            else:
                nl = buf.find(b"\n", self._scanned)
                if nl >= 0:
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    self._scanned = 0
                    if len(line) > self.limit:
                        raise LineTooLong(f"line of {len(line)} bytes is over the {self.limit}-byte limit: discarded")
                    return line
                self._scanned = len(buf)
                if len(buf) > self.limit:
                    buf.clear()
                    self._scanned = 0
                    self._skipping = True
                    raise LineTooLong(f"line over the {self.limit}-byte limit: discarded")
            data = self._recv(self._chunk)
            if not data:
                return None
            buf += data


# ---- addresses ----

def parse_address(addr: str) -> tuple[str, str, int]:
    """``unix:PATH`` or a bare path -> ("unix", PATH, 0); ``HOST:PORT`` / ``[V6]:PORT`` / ``tcp:HOST:PORT``
    -> ("tcp", HOST, PORT)."""
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise CgwatchError(f"bad address {addr!r}: unix: needs a path")
        return "unix", path, 0
    text = addr[4:] if addr.startswith("tcp:") else addr
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and not host:
        raise CgwatchError(f"bad address {addr!r}: name the host, e.g. 127.0.0.1:{port} (or 0.0.0.0:{port} with --token)")
    if sep and port.isdigit() and "/" not in host and host:
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if int(port) > 65535:
            raise CgwatchError(f"bad address {addr!r}: port {port} is out of range")
        return "tcp", host, int(port)
    if addr.startswith("tcp:"):
        raise CgwatchError(f"bad address {addr!r}: expected tcp:HOST:PORT")
    if sep and "/" not in addr:   # HOST:PORT with a port that is not one (a socket path: unix:PATH, or with a /)
        raise CgwatchError(f"bad address {addr!r}: the port must be a number 0..65535 (a socket: unix:PATH)")
    if not addr:
        raise CgwatchError("empty address: expected unix:PATH, a path, or HOST:PORT")
    return "unix", addr, 0


def format_address(kind: str, host: str, port: int) -> str:
    if kind == "unix":
        return f"unix:{host}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is loopback (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    addrs = {info[4][0].split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def open_connection(addr: str, timeout: float | None = 5.0) -> socket.socket:
    """A connected, blocking socket to a daemon address (OSError if it cannot connect)."""
    kind, host, port = parse_address(addr)
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(host)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock
