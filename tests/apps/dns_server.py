"""A tiny authoritative DNS server for the tests, standing in for the cluster's CoreDNS:
A records (a headless Service has one per ready pod) from a JSON file read again on every
query, so a test moves "pods" by rewriting it; every other name is NXDOMAIN.

    python -m tests.apps.dns_server ADDRESS PORT RECORDS.json

RECORDS.json: {"ttl": 1, "names": {"web.shop": ["10.231.0.2", "10.231.0.3"]}}
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
from pathlib import Path

A, AAAA, IN = 1, 28, 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3


def _question(packet: bytes) -> tuple[str, int, int, int]:
    """(name, type, class, offset past the question) of the query's one question."""
    labels, at = [], 12
    while True:
        length = packet[at]
        at += 1
        if length == 0:
            break
        if length > 63:
            raise ValueError("compressed or bad label in a question")
        labels.append(packet[at : at + length].decode("ascii").lower())
        at += length
    qtype, qclass = struct.unpack("!HH", packet[at : at + 4])
    return ".".join(labels), qtype, qclass, at + 4


def answer(packet: bytes, records: dict) -> bytes:
    query_id, flags = struct.unpack("!HH", packet[:4])
    try:
        name, qtype, qclass, end = _question(packet)
    except (ValueError, IndexError, struct.error):
        return struct.pack("!HHHHHH", query_id, 0x8180 | FORMERR, 0, 0, 0, 0)
    addresses = records.get("names", {}).get(name)
    rcode = NOERROR if addresses is not None else NXDOMAIN
    found = [a for a in addresses or [] if qtype == A and qclass == IN]
    head = struct.pack("!HHHHHH", query_id, 0x8180 | (flags & 0x0100) | rcode, 1, len(found), 0, 0)
    body = packet[12:end]
    for address in found:
        data = ipaddress.IPv4Address(address).packed
        body += struct.pack("!HHHIH", 0xC00C, A, IN, int(records.get("ttl", 1)), len(data)) + data
    return head + body


def main() -> None:
    address, port, path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, port))
    while True:
        packet, peer = server.recvfrom(4096)
        if len(packet) < 12:
            continue
        records = json.loads(path.read_text())
        server.sendto(answer(packet, records), peer)


if __name__ == "__main__":
    main()
