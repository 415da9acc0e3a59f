"""The addresses `leeway serve` listens on, checked before anything is built: an address already in use (or not
this host's, or a privileged port) is a configuration error, reported in one line naming the address, what it
is for and the setting that chose it, like any other (exit status 2).

Generic on purpose: every listener (gRPC, metrics, HTTP) goes through ``check_listen`` with its own name and
setting, and a bind that fails anyway later (a race with another process) becomes the same ``ListenError``
through ``listen_error``.
"""

from __future__ import annotations

import errno
import socket


class ListenError(Exception):
    """``address`` (for ``what``, set by ``setting``) cannot be listened on; ``str()`` is the one line to print."""

    def __init__(self, address: str, what: str, setting: str, reason: str):
        super().__init__(f"cannot listen on {address} for {what} ({setting}): {reason}")
        self.address = address
        self.what = what
        self.setting = setting
        self.reason = reason


_REASONS = {
    errno.EADDRINUSE: "address already in use (another process listens there; stop it or choose another port)",
    errno.EADDRNOTAVAIL: "no such address on this host",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def check_listen(address: str, what: str, setting: str) -> None:
    """Raises ListenError if ``address`` (HOST:PORT) cannot be bound now. Binds a throwaway socket to each address
    the host resolves to, with SO_REUSEADDR as the real listeners (gRPC, http.server) set it, so that a port
    held only by connections in TIME_WAIT counts as free; port 0 always is."""
    try:
        host, port = _split(address)
    except ValueError:
        raise ListenError(address, what, setting, "not HOST:PORT") from None
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ListenError(address, what, setting, f"cannot resolve {host!r} ({error.strerror})") from None
    for family, kind, protocol, _name, sockaddr in infos:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                raise listen_error(address, what, setting, error) from None


def listen_error(address: str, what: str, setting: str, error: BaseException) -> ListenError:
    """The ListenError for a bind that failed with ``error`` (an OSError with errno, or gRPC's RuntimeError)."""
    number = getattr(error, "errno", None)
    if number in _REASONS:
        return ListenError(address, what, setting, _REASONS[number])
    if number is None and "bind" in str(error).lower():
        # gRPC says only "Failed to bind": ask the operating system why.
        try:
            check_listen(address, what, setting)
        except ListenError as known:
            return known
    return ListenError(address, what, setting, getattr(error, "strerror", None) or str(error))
