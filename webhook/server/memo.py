"""The engine's answers remembered: the pods of one ReplicaSet differ only in fields the
engine never reads (name, uid), so a scale-up asks the same question many times.

The key is everything the engine reads: the namespace, the mesh config's generation,
whether the pod has a metadata object, its annotations and labels, and its spec, as
bytes. The answer is kept with its patch already encoded. Only small pods are
remembered, so the cache stays small whatever it is sent (at most ENTRIES x (KEY_BYTES +
an answer)).
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from typing import Any

import orjson

from webhook.engine import InjectionResult, inject_or_deny
from webhook.engine.config import MeshConfig

ENTRIES = 256
KEY_BYTES = 16 * 1024


def _key(pod: dict[str, Any], namespace: str, config: MeshConfig) -> bytes | None:
    metadata = pod.get("metadata")
    has_metadata = isinstance(metadata, dict)
    read = [
        namespace,
        config.generation,
        has_metadata,
        metadata.get("annotations") if has_metadata else None,
        metadata.get("labels") if has_metadata else None,
        pod.get("spec"),
    ]
    try:
        key = orjson.dumps(read)
    except (orjson.JSONEncodeError, TypeError):
        return None
    return key if len(key) <= KEY_BYTES else None


def encode(result: InjectionResult) -> str | None:
    return base64.b64encode(orjson.dumps(result.patch)).decode() if result.patch else None


class Memo:
    def __init__(self) -> None:
        self.answers: OrderedDict[bytes, tuple[InjectionResult, str | None]] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = 0

    def inject(
        self, pod: dict[str, Any], namespace: str, config: MeshConfig
    ) -> tuple[InjectionResult, str | None]:
        """``engine.inject_or_deny`` and its patch encoded, from memory when the same pod
        was asked before; raises what it raises (InternalError), and remembers only answers."""
        key = _key(pod, namespace, config)
        if key is not None:
            with self.lock:
                found = self.answers.get(key)
                if found is not None:
                    self.answers.move_to_end(key)
                    self.hits += 1
                    return found
        answer = inject_or_deny(pod, namespace, config)
        remembered = (answer, encode(answer))
        if key is not None:
            with self.lock:
                self.answers[key] = remembered
                if len(self.answers) > ENTRIES:
                    self.answers.popitem(last=False)
        return remembered
