"""How much the webhook reads from one pod and writes about it.

Anyone allowed to create a pod in a meshed namespace chooses what we read, so every output
that grows with the input is capped here. The caps sit under what the API server itself
passes on: it truncates a request's warnings once they total 4,096 characters (each to 256),
and it rejects a pod whose annotations total more than 256 KiB, which it checks only
after mutating webhooks have run.
"""

from __future__ import annotations

from collections.abc import Sequence

ANNOTATIONS_BYTES = 256 * 1024
"""Kubernetes' TotalAnnotationSizeLimitB: keys plus values of metadata.annotations."""

CONTAINERS = 1000
"""App and init containers of a pod we inject; real pods have a handful. Everything else a
pod lists costs well under a microsecond an item, but a container costs several."""

PROBLEMS = 5
"""Problems a denial message lists before it counts the rest."""
PROBLEM_CHARS = 400

WARNINGS = 10
"""Warnings an answer carries, the last one counting any left out: 10 x 256 < 4,096."""
WARNING_CHARS = 256

IGNORED_KEYS = 10
"""Unknown annotation keys the proxy.io/status annotation names."""
KEY_CHARS = 80

LOG_FIELD_CHARS = 2048
"""A string in a log line; a traceback may have 8 times that."""
LOG_TRACEBACK_CHARS = 8 * LOG_FIELD_CHARS


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, saying how many were cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"{text[:limit]}... ({cut:,} more characters)"


def first(items: Sequence[str], count: int, chars: int, noun: str) -> list[str]:
    """The first ``count`` items, each clipped, and a last line saying how many more."""
    shown = [clip(item, chars) for item in items[:count]]
    if len(items) > count:
        shown[-1] = f"... and {len(items) - count + 1:,} more {noun}"
    return shown
