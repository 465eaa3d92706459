"""A peer that speaks our mTLS itself (ALPN proxy.io-mtls), with whatever certificate a
test gives it: ``python -m tests.apps.mtls_client HOST PORT CERT KEY CA [PATH]``.

Prints the HTTP status line and the server certificate's serial, or ``refused: <why>``."""

from __future__ import annotations

import socket
import ssl
import sys

from cryptography import x509

from webhook.engine.names import MTLS_ALPN


def main(host: str, port: str, cert: str, key: str, ca: str, path: str = "/") -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE IDs are URIs: no host name to check
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols([MTLS_ALPN])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            serial = x509.load_der_x509_certificate(tls.getpeercert(True)).serial_number
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    except (OSError, ssl.SSLError) as exc:
        print(f"refused: {exc}")
        return
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"{status or 'closed'} serial={serial:x}")
    print(answer.partition(b"\r\n\r\n")[2].decode(errors="replace"))


if __name__ == "__main__":
    main(*sys.argv[1:])
