"""The relay's wire format (``relay.c`` writes it, the agent reads it): ``PIR1``, a big-endian
u32 length and the ``CNI_*`` variables as NUL-terminated ``KEY=VALUE`` strings, a u32 length
and the network configuration. The agent answers ``A`` on accepting a connection, and after
the request one byte of exit code and what the relay prints."""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAGIC = b"PIR1"
ACK = b"A"
MAX_ENVIRON = 65_536
MAX_CONFIG = 1 << 20
FORWARDED = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


class WireError(ValueError):
    pass


async def _sized(reader: asyncio.StreamReader, limit: int, what: str) -> bytes:
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > limit:
        raise WireError(f"{what} of {size} bytes is over the {limit} allowed")
    return await reader.readexactly(size)


async def read_request(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """Raises WireError, or asyncio.IncompleteReadError for a request cut short."""
    if await reader.readexactly(4) != MAGIC:
        raise WireError("not a relay request")
    block = await _sized(reader, MAX_ENVIRON, "the environment")
    environ = {}
    for item in block.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep and key in FORWARDED:
            environ[key] = value
    return environ, await _sized(reader, MAX_CONFIG, "the network configuration")


def encode_request(environ: dict[str, str], config: bytes) -> bytes:
    """What the relay sends (tests speak to the agent directly with it)."""
    block = b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items() if k in FORWARDED)
    return MAGIC + len(block).to_bytes(4, "big") + block + len(config).to_bytes(4, "big") + config


def encode_answer(code: int, result: dict[str, Any] | None) -> bytes:
    printed = b"" if result is None else json.dumps(result).encode() + b"\n"
    return bytes([code]) + printed
