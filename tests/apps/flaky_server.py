"""An HTTP upstream that misbehaves on request, for the per-upstream timeout and retry
tests: ``/slow`` answers after 3 s; ``/reset/KEY`` counts the attempt and resets the
connection without an answer; ``/count/KEY`` says how many attempts KEY had.

    python -m tests.apps.flaky_server ADDRESS PORT
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ATTEMPTS: Counter[str] = Counter()
LOCK = threading.Lock()
SLOW_SECONDS = 3


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: str) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(SLOW_SECONDS)
            self._answer("slow\n")
        elif self.path.startswith("/reset/"):
            with LOCK:
                ATTEMPTS[self.path.removeprefix("/reset/")] += 1
            # SO_LINGER 0: close with a RST, as a crashing upstream would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif self.path.startswith("/count/"):
            with LOCK:
                self._answer(f"{ATTEMPTS[self.path.removeprefix('/count/')]}\n")
        else:
            self._answer("ok\n")


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
