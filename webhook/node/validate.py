"""``proxy-injector validate-interception``, run by the proxy-validate init container: is the
redirect the CNI plugin programs really in place in this pod?

It listens on Envoy's outbound capture port (Envoy has not started yet) and connects to an
address the pod's rules redirect; the check passes only when that connection arrives on
the listener with the address asked for as its original destination. Nothing answers at
the address itself, so a pod whose node has no plugin fails here instead of starting
unmeshed.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

SO_ORIGINAL_DST = 80
"""getsockopt option (linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number)."""
NOT_REDIRECTED_EXIT = 95
"""proxy-validate's exit code when the pod's interception is missing: the CNI agent's repair
loop looks for it (as linkerd's validator does, with the same number)."""


class CheckFailed(RuntimeError):
    """The check could not be made (its port is taken, say): exit code 1."""


class NotRedirected(CheckFailed):
    """The check was made and nothing was redirected: exit code 95."""


def target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--connect {text!r}: expected ADDRESS:PORT")
    return host.strip("[]"), int(port)


def _original_destination(conn: socket.socket, family: int) -> tuple[str, int]:
    if family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, address = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntop(socket.AF_INET, address), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, address = struct.unpack_from("!2xH4x16s", raw)
    return socket.inet_ntop(socket.AF_INET6, address), port


def check(address: str, port: int, capture_port: int, timeout: float = 5.0) -> str:
    """A sentence saying what arrived; raises NotRedirected saying what did not."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", capture_port))
        except OSError as exc:
            raise CheckFailed(f"cannot listen on port {capture_port}: {exc.strerror}") from None
        listener.listen(1)
        listener.settimeout(timeout)
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.setblocking(False)
            connecting = client.connect_ex((address, port))
            started = time.monotonic()
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                refused = "" if connecting in (0, errno.EINPROGRESS) else os.strerror(connecting)
                raise NotRedirected(
                    f"a connection to {address} port {port} did not reach port {capture_port} "
                    f"within {timeout:g}s{f' ({refused})' if refused else ''}: this pod's "
                    "traffic is not redirected to the proxy. "
                    "Is the proxy-injector CNI plugin installed on this node (DaemonSet "
                    "proxy-injector-cni in proxy-system)?"
                ) from None
            with conn:
                arrived = _original_destination(conn, family)
    if arrived != (address, port):
        raise NotRedirected(
            f"port {capture_port} got a connection for {arrived[0]} port {arrived[1]}, not the "
            f"one to {address} port {port}"
        )
    took = (time.monotonic() - started) * 1000
    return f"redirected: {address} port {port} reached port {capture_port} in {took:.1f} ms"
