"""Input from files, sockets and the API, read within bounds: bytes as UTF-8 text, the
nesting of parsed documents, Kubernetes times."""

from __future__ import annotations

import datetime


def utf8(data: bytes) -> str:
    """``data`` as text; ValueError naming the first byte that is not UTF-8."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}"
        ) from None


def nests_deeper(value: object, limit: int) -> bool:
    """Whether parsed JSON or YAML ``value`` nests more than ``limit`` levels; iterative, so a
    deep document cannot exhaust the stack, and it stops at the first level past ``limit``."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack += [(child, depth + 1) for child in item.values()]
        elif isinstance(item, list):
            stack += [(child, depth + 1) for child in item]
    return False


def timestamp(text: str | None) -> datetime.datetime | None:
    """A Kubernetes time (RFC 3339, ``Z`` or an offset, seconds or microseconds), or None
    when unset; ValueError when it is not one."""
    if not text:
        return None
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no time zone (Z or an offset)")
    return parsed
