"""A server that does what most hand-written ones do: bind() and nothing else, so the
socket's mode is whatever the umask leaves. Answers every connection with a fixed HTTP 200."""

import socket
import sys

from hello import BODY
from unix_server import answer_each, http_ok

path = sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
answer_each(server, http_ok(BODY))
