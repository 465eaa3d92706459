"""The mesh config from its file: read within bounds, then parsed by the engine."""

from __future__ import annotations

from pathlib import Path

from webhook.common.inputs import utf8
from webhook.engine.config import MAX_BYTES, ConfigError, MeshConfig, parse


def _read(path: str | Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES // 1024} KiB: not a mesh config")
    try:
        return utf8(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load(path: str | Path) -> MeshConfig:
    return parse(_read(path), str(path))
