"""Shared by the tests/test_attack_*.py modules: the app's memory, a recording server on
another loopback address, a raw POST that stops when answered. (A second account:
tests.app_process.add_user.)
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.app_process import AppProcess


def _status(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class PeakMemory:
    """The app process's peak resident memory over a block, from /proc (Linux).

    Writing 5 to /proc/<pid>/clear_refs resets the peak (VmHWM) to the current size, so
    `growth` is exactly how far the process's memory rose while the block ran.
    """

    def __init__(self, app: AppProcess) -> None:
        assert app.proc is not None
        self.pid = app.proc.pid
        self.before = 0
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
            refs.write("5")
        self.before = _status(self.pid)["VmRSS"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = _status(self.pid)["VmHWM"]

    @property
    def growth(self) -> int:
        return self.peak - self.before


class Recorder:
    """An HTTP server that only counts what reaches it (a host that must get nothing).

    Bound to 127.0.0.2 by default: another origin than the app's 127.0.0.1, still on
    loopback, so no test reaches the network.
    """

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                recorder.requests.append(self.path)
                body = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawPost:
    """A POST over a plain socket that reads the answer as soon as it comes.

    Browsers stop sending when the server answers early (413 before the body is read);
    this client does the same, so a test sees the status rather than a broken pipe. With
    no `length` the body is sent chunked.
    """

    def __init__(
        self, app: AppProcess, path: str, headers: dict[str, str], length: int | None
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", app.port), timeout=30)
        self.chunked = length is None
        framing = "Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {length}"
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n{lines}{framing}\r\n\r\n"
        self.sock.sendall(head.encode())
        self.sent = 0

    def answered(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def send(self, data: bytes) -> bool:
        """False once the server has answered or closed (stop sending then)."""
        if self.answered():
            return False
        framed = f"{len(data):x}\r\n".encode() + data + b"\r\n" if self.chunked else data
        try:
            self.sock.sendall(framed)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return False
        self.sent += len(data)
        return True

    def finish(self) -> None:
        """End a chunked body."""
        if self.chunked:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.sock.sendall(b"0\r\n\r\n")

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body); status 0 if the server closed silently."""
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in data:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.lower(): value
            for name, value in (line.split(": ", 1) for line in lines[1:] if ": " in line)
        }
        length = int(headers.get("content-length", "0"))
        with contextlib.suppress(ConnectionResetError):
            while len(body) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        self.sock.close()
        return (int(lines[0].split()[1]) if head else 0), headers, body

    def close(self) -> None:
        self.sock.close()
