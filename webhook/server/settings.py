"""The server's settings for its clients' sake: how long headers may take, how many
connections are served, how shutdown drains; and whether it is ready.

Plain data, kept apart from ``server`` (which imports uvicorn) so that the command line
shows the defaults without loading the server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lifecycle:
    """Ready once the certificate is loaded; draining from the first SIGTERM on."""

    loaded: bool = False
    draining: bool = False

    def ready(self) -> bool:
        return self.loaded and not self.draining


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 5.0
    """Seconds from a connection's TLS handshake, or a request's first byte, to the end of
    its headers. The API server sends its headers at once."""
    max_connections: int = 512
    """Connections at once, those still in their TLS handshake included: past it, a new
    connection takes the place of the oldest still in its handshake, or is closed when all
    are established."""
    handshake_timeout: float = 5.0
    """Seconds a connection may take over its TLS handshake."""
    max_header_bytes: int = 65536
    """A request's line and headers together; past it, 431 and the connection closed."""
    max_header_fields: int = 100
    drain_seconds: float = 5.0
    """After SIGTERM: answering on, each response closing its connection, before the
    listener closes."""
    close_grace_seconds: float = 0.5
    """Between refusing new TCP handshakes and closing the listener: one under way
    completes in a round trip (only one whose SYN-ACK is lost, resent after 1 s, is left)."""
    settle_seconds: float = 1.0
    """After the listener closes: a request already on its way over an open connection is
    still answered before idle connections are closed."""
    shutdown_timeout: float = 15.0
    """Then at most this long for requests in progress (a body may take 10 s)."""
