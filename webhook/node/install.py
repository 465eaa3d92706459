"""Putting the plugin on the node and keeping it in the node's CNI chain.

- ``<bin dir>/proxy-injector``: the static relay, copied from the image;
- the last plugin of the node's active ``.conflist`` (the first in name order, as the
  kubelet picks it), naming the agent's socket, the relay's log file and the deadline; put
  back whenever the cluster's own plugin rewrites the file, and never into a conflist whose
  ``cniVersion`` (or any of its ``cniVersions``) the plugin cannot serve.

On start it clears what an earlier instance left (a half-written file, the kubeconfig and
the shell shim of earlier releases); on stop it takes itself out of the conflist and the
relay away.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from webhook.node.plugin import SUPPORTED_VERSIONS

PLUGIN_TYPE = "proxy-injector"
TEMPORARY = f".{PLUGIN_TYPE}.tmp"
"""The ending of the files written before they are renamed into place: only ours are
ever cleared (other agents on the node write temporary files of their own there)."""
OLD_KUBECONFIG = "proxy-injector-kubeconfig"
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


class InstallError(RuntimeError):
    pass


class State(Enum):
    INSTALLED = "installed"
    CHANGED = "changed"


@dataclass(frozen=True)
class Installation:
    bin_dir: Path
    conf_dir: Path
    relay: Path
    """The static relay in the image, copied to ``bin_dir``."""
    socket: Path
    log_file: Path
    timeout_seconds: float

    @property
    def plugin(self) -> Path:
        return self.bin_dir / PLUGIN_TYPE

    def entry(self) -> dict[str, Any]:
        return {
            "type": PLUGIN_TYPE,
            "agentSocket": str(self.socket),
            "logFile": str(self.log_file),
            "timeoutSeconds": self.timeout_seconds,
        }


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, so the runtime never reads (or runs) half a file."""
    temporary = path.with_name(f".{path.name}{TEMPORARY}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.chmod(mode)
    os.replace(temporary, path)


def clean_previous(install: Installation) -> list[str]:
    """What an earlier instance left; returns what was removed."""
    removed = []
    for leftover in (
        install.bin_dir / f".{PLUGIN_TYPE}.tmp",  # what releases before this one wrote
        install.conf_dir / OLD_KUBECONFIG,
        *install.bin_dir.glob(f".*{TEMPORARY}"),
        *install.conf_dir.glob(f".*{TEMPORARY}"),
    ):
        if leftover.exists():
            leftover.unlink()
            removed.append(str(leftover))
    plugin = install.plugin
    if plugin.is_file() and plugin.read_bytes()[:2] == b"#!":  # the shell shim of old releases
        plugin.unlink()
        removed.append(str(plugin))
    return removed


def copy_relay(install: Installation) -> bool:
    """The relay in ``bin_dir``, the image's own; True when it was (re)written."""
    try:
        wanted = install.relay.read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read the relay {install.relay}: {exc.strerror}") from None
    try:
        if install.plugin.read_bytes() == wanted:
            return False
    except OSError:
        pass
    _write(install.plugin, wanted, 0o755)
    return True


def active_conflist(conf_dir: Path) -> Path | None:
    """The file the runtime uses: the first config in name order (as libcni sorts them)."""
    found = sorted(
        p
        for p in conf_dir.iterdir()
        if p.suffix in CONFIG_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    return next(iter(found), None)


def _load(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InstallError(f"{path}: cannot read the CNI config: {exc}") from None
    if not isinstance(config, dict):
        raise InstallError(f"{path}: not a JSON object")
    if "plugins" not in config:  # a single-plugin .conf: make it a list
        single = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
        config = {
            "cniVersion": config.get("cniVersion"),
            "name": config.get("name"),
            "plugins": [single],
        }
    if not isinstance(config["plugins"], list) or not all(
        isinstance(p, dict) for p in config["plugins"]
    ):
        raise InstallError(f"{path}: plugins is not a list of objects")
    return config


def unserved_versions(config: dict[str, Any]) -> list[str]:
    """The versions a conflist may be run at that the plugin cannot serve."""
    listed = config.get("cniVersions")
    versions = [config.get("cniVersion"), *(listed if isinstance(listed, list) else [listed])]
    versions = [v for v in versions if v is not None]
    if not versions:
        return ["(none given)"]
    return [str(v) for v in versions if v not in SUPPORTED_VERSIONS]


def insert(install: Installation) -> tuple[State, Path]:
    """Make ours the last plugin of the active conflist. Raises InstallError saying why it
    cannot (no config yet, one it cannot read, or a version it cannot serve)."""
    path = active_conflist(install.conf_dir)
    if path is None:
        raise InstallError(f"no CNI config in {install.conf_dir} yet (is the network plugin up?)")
    config = _load(path)
    unserved = unserved_versions(config)
    if unserved:
        raise InstallError(
            f"{path}: not inserted: cniVersion {', '.join(unserved)} is not one the plugin "
            f"serves ({', '.join(SUPPORTED_VERSIONS)})"
        )
    plugins = [p for p in config["plugins"] if p.get("type") != PLUGIN_TYPE]
    # Keys an operator added to our entry (args, say) are kept; ours are rewritten.
    earlier = next((p for p in config["plugins"] if p.get("type") == PLUGIN_TYPE), {})
    wanted = [*plugins, {**earlier, **install.entry()}]
    if config["plugins"] == wanted and path.suffix == ".conflist":
        return State.INSTALLED, path
    config["plugins"] = wanted
    target = path if path.suffix == ".conflist" else path.with_suffix(".conflist")
    _write(target, (json.dumps(config, indent=2) + "\n").encode(), 0o644)
    if target != path:
        path.unlink()
    return State.CHANGED, target


def remove(install: Installation) -> None:
    """Take ours out of the conflist (the file stays) and the relay away."""
    path = active_conflist(install.conf_dir)
    if path is not None and path.suffix == ".conflist":
        try:
            config = _load(path)
        except InstallError:
            config = None
        if config is not None:
            kept = [p for p in config["plugins"] if p.get("type") != PLUGIN_TYPE]
            if kept != config["plugins"]:
                config["plugins"] = kept
                _write(path, (json.dumps(config, indent=2) + "\n").encode(), 0o644)
    install.plugin.unlink(missing_ok=True)
