"""The mesh config from its file: read within bounds, then parsed by the engine."""

from __future__ import annotations

from pathlib import Path

from webhook.common.inputs import utf8
from webhook.engine.config import (
    MAX_BYTES,
    ConfigError,
    MeshConfig,
    layer_order,
    parse,
    parse_layers,
)


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


def files(path: str | Path) -> list[Path]:
    """The files a mesh config path stands for: itself, or for a directory (a mounted
    ConfigMap) its mesh.yaml and then each other ``*.yaml``, in the order they apply."""
    folder = Path(path)
    if not folder.is_dir():
        return [folder]
    names = layer_order([item.name for item in folder.iterdir() if item.is_file()])
    if not names:
        raise ConfigError(f"{folder}: no *.yaml file: not a mesh config directory")
    return [folder / name for name in names]


def load(path: str | Path) -> MeshConfig:
    """A file, or a directory of layers: mesh.yaml, then each component's fragment."""
    if not Path(path).is_dir():
        return parse(_read(path), str(path))
    found = files(path)
    source = f"{path} ({', '.join(f.name for f in found)})"
    return parse_layers([(f.name, _read(f)) for f in found], source)
