"""Shared by the tests/test_attack_*.py modules: the app's memory, a recording server on
another loopback address. (A second account: tests.app_process.add_user.)
"""

from __future__ import annotations

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
