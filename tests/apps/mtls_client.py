"""A peer that speaks our mTLS itself (ALPN proxy.io-mtls), with whatever certificate a
test gives it: ``python -m tests.apps.mtls_client HOST PORT CERT KEY CA [PATH [RESUME]]``.

Prints the HTTP status line and the server certificate's serial, or ``refused: <why>``.
With RESUME (seconds), it calls again that much later resuming the first TLS session if
the server gave one (``resumed=True|False``), as a client whose certificate has meanwhile
expired would."""

from __future__ import annotations

import socket
import ssl
import sys
import time

from cryptography import x509

from webhook.engine.names import MTLS_ALPN


def _call(
    context: ssl.SSLContext, host: str, port: str, path: str, session: ssl.SSLSession | None
) -> ssl.SSLSession | None:
    try:
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, session=session) as tls,
        ):
            serial = x509.load_der_x509_certificate(tls.getpeercert(True)).serial_number
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            kept, resumed = tls.session, tls.session_reused
    except (OSError, ssl.SSLError) as exc:
        print(f"refused: {exc}")
        return None
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"{status or 'closed'} serial={serial:x} resumed={resumed}")
    print(answer.partition(b"\r\n\r\n")[2].decode(errors="replace"))
    return kept


def main(
    host: str, port: str, cert: str, key: str, ca: str, path: str = "/", resume: str = ""
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE IDs are URIs: no host name to check
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols([MTLS_ALPN])
    session = _call(context, host, port, path, None)
    if resume:
        time.sleep(float(resume))
        _call(context, host, port, path, session)


if __name__ == "__main__":
    main(*sys.argv[1:])
