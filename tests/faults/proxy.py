"""A small threaded TCP forwarder that can make a database "go away" without touching the real server.

``TcpProxy(upstream_host, upstream_port)`` listens on 127.0.0.1:<ephemeral port> and forwards every
connection to the upstream. ``cut()`` closes every live connection (both directions, so the service sees its
PostgreSQL connections drop mid-query) and refuses new ones (the listening socket is closed, so connects get
ECONNREFUSED exactly as with a stopped server); ``restore()`` listens again on the same port.
"""

from __future__ import annotations

import socket
import threading
import time


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1", port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.port = port
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.cut_count = 0
        self.connections = 0
        self.closed = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def close(self) -> None:
        self.closed = True
        self._stop_listening()
        self._drop_all()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def cut(self) -> None:
        """Closes all live connections and refuses new ones until ``restore()``."""
        with self._lock:
            self.cut_count += 1
        self._stop_listening()
        self._drop_all()

    def restore(self) -> None:
        """Accepts connections again, on the same port."""
        if self._listener is None and not self.closed:
            self._listen()

    # ------------------------------------------------------------------ plumbing

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                listener.bind((self.listen_host, self.port))
                break
            except OSError:
                if self.port == 0 or time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.05)
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True)
        self._acceptor.start()

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.join(timeout=2)

    def _drop_all(self) -> None:
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed (cut or close)
            if self._listener is not listener:
                _close(client)
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._live.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._live.discard(src)
                self._live.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
