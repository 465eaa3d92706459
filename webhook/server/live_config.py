"""The mesh config in force, re-read when its file changes.

A mounted ConfigMap is updated by swapping a symlink, so the file is watched by its real
path, size and mtime. A new config replaces the old in one reference assignment: each
admission reads ``current`` once and sees one whole config. A file that fails to read, parse
or validate, whatever the reason, is logged with it, counted, and the old config stays in
force; the file is read and validated on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from webhook.common import mesh_config
from webhook.engine import config
from webhook.server.metrics import Metrics

log = logging.getLogger("proxy_injector.config")


def _file_fingerprint(path: Path) -> tuple[str, int, int]:
    try:
        info = os.stat(path)
        return os.path.realpath(path), info.st_mtime_ns, info.st_size
    except OSError:
        return str(path), -1, -1


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Of the file, or of every layer file of a directory (files added or removed too)."""
    try:
        return tuple(_file_fingerprint(item) for item in mesh_config.files(path))
    except (OSError, config.ConfigError):
        return ((str(path), -1, -1),)


class LiveConfig:
    def __init__(self, path: Path | None, initial: config.MeshConfig, metrics: Metrics) -> None:
        self.path, self.current, self.metrics = path, initial, metrics
        self.seen = _fingerprint(path) if path else None
        metrics.config_in_force(initial)

    def check(self) -> bool:
        """Reload if the file changed; True when a new config went into force."""
        if self.path is None:
            return False
        now = _fingerprint(self.path)
        if now == self.seen:
            return False
        self.seen = now
        try:
            loaded = mesh_config.load(self.path)
        except Exception as exc:  # whatever a file does, the old config stays and we watch on
            error = str(exc) if isinstance(exc, config.ConfigError) else repr(exc)
            self.metrics.config_reloads.labels("error").inc()
            log.warning(
                "new mesh config not loaded, keeping the current one", extra={"error": error}
            )
            return False
        self.metrics.config_reloads.labels("ok").inc()
        self.metrics.config_in_force(loaded)
        self.current = loaded
        log.info("mesh config reloaded", extra={"config": str(self.path)})
        return True

    async def watch(self, every: float) -> None:
        """Read and validate off the event loop, so admissions and probes go on meanwhile."""
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # never the end of watching
                log.exception("mesh config check failed")
