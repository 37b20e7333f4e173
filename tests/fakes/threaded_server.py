"""Serving a fake API with uvicorn in a daemon thread on 127.0.0.1, shared by the fakes.

Tests talk to fakes with the real clients over real sockets, so the fakes must start
fast, bind an ephemeral port, and stop cleanly; this is that part, once.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any, Self

import uvicorn


class ThreadedServer:
    """Base for fake servers: subclasses set `name` and `self.app`, and call `_init_server`."""

    name = "fake server"
    app: Any

    def _init_server(self, port: int = 0) -> None:
        self._requested_port = port
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._port

    def start(self, timeout: float = 10.0) -> Self:
        """Bind, serve in a daemon thread and return once the port answers."""
        if self._thread is not None:
            return self
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says
        # TCP, and without it every keep-alive response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        self._socket = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"{self.name}-{self._port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.005)
        with socket.create_connection(("127.0.0.1", self._port), timeout=timeout):
            pass
        return self

    def stop(self) -> None:
        """Shut down the server thread; safe to call twice."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(5)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def serve_until_signalled(self, base_url: str) -> int:
        """Process mode, once started: print "READY <base_url>" (the parent waits for
        that line), then serve until SIGINT or SIGTERM. Returns the exit status."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"READY {base_url}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()
        return 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
