"""``proxy-injector cni install``: the entrypoint of the proxy-injector-cni DaemonSet.

It puts the plugin on the node and keeps it in the node's CNI chain while it runs:

- ``/opt/cni/bin/proxy-injector``: a shell shim that runs ``proxy-injector cni`` inside
  this container (``nsenter`` into its mount namespace, by the PID it records), so the node
  needs no Python, and a plugin whose DaemonSet is gone fails (the runtime retries) instead
  of passing pods unmeshed;
- the last plugin of the node's active ``.conflist`` (the first in name order, as the
  kubelet picks it), put back within ``--interval`` seconds whenever the cluster's own
  plugin rewrites the file;
- a kubeconfig next to the conflist, from this pod's ServiceAccount (its RBAC: get pods).

On SIGTERM it takes all three away again.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLUGIN_TYPE = "proxy-injector"
KUBECONFIG_NAME = "proxy-injector-kubeconfig"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class InstallError(RuntimeError):
    pass


@dataclass(frozen=True)
class Installation:
    bin_dir: Path
    conf_dir: Path
    pid: int
    """The process whose mount namespace the shim enters (this one, as the node sees it)."""
    server: str
    token_file: Path
    ca_file: Path | None
    iptables_backend: str = "auto"

    @property
    def shim(self) -> Path:
        return self.bin_dir / PLUGIN_TYPE

    @property
    def kubeconfig(self) -> Path:
        return self.conf_dir / KUBECONFIG_NAME


def _write(path: Path, text: str, mode: int) -> None:
    """Atomically, so the runtime never reads half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    os.replace(temporary, path)


def write_shim(install: Installation) -> None:
    _write(
        install.shim,
        "#!/bin/sh\n"
        "# proxy-injector's CNI plugin: runs inside the proxy-injector-cni DaemonSet's container\n"
        "# (written by `proxy-injector cni install`, removed when it stops).\n"
        f"exec nsenter --target {install.pid} --mount -- proxy-injector cni\n",
        0o755,
    )


def write_kubeconfig(install: Installation) -> None:
    cluster: dict[str, Any] = {"server": install.server}
    if install.ca_file:
        cluster["certificate-authority"] = str(install.ca_file)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "proxy-injector-cni", "user": {"tokenFile": str(install.token_file)}}],
        "contexts": [
            {"name": "cni", "context": {"cluster": "local", "user": "proxy-injector-cni"}}
        ],
        "current-context": "cni",
    }
    _write(install.kubeconfig, json.dumps(kubeconfig, indent=2) + "\n", 0o600)


def active_conflist(conf_dir: Path) -> Path | None:
    """The file the runtime uses: the first config in name order (as libcni sorts them)."""
    found = sorted(
        p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json") and p.is_file()
    )
    return next((p for p in found if p.name != KUBECONFIG_NAME), None)


def _ours(install: Installation) -> dict[str, Any]:
    return {
        "type": PLUGIN_TYPE,
        "kubeconfig": str(install.kubeconfig),
        "iptablesBackend": install.iptables_backend,
    }


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
            "cniVersion": config.get("cniVersion", "1.0.0"),
            "name": config.get("name"),
            "plugins": [single],
        }
    return config


def insert(install: Installation) -> bool:
    """Make ours the last plugin of the active conflist; True when the file changed."""
    path = active_conflist(install.conf_dir)
    if path is None:
        raise InstallError(f"no CNI config in {install.conf_dir} yet (is the network plugin up?)")
    config = _load(path)
    plugins = [p for p in config["plugins"] if p.get("type") != PLUGIN_TYPE]
    wanted = [*plugins, _ours(install)]
    if config["plugins"] == wanted and path.suffix == ".conflist":
        return False
    config["plugins"] = wanted
    target = path if path.suffix == ".conflist" else path.with_suffix(".conflist")
    _write(target, json.dumps(config, indent=2) + "\n", 0o644)
    if target != path:
        path.unlink()
    return True


def remove(install: Installation) -> None:
    """Take ours out of the conflist (the file stays), and the shim and kubeconfig away."""
    path = active_conflist(install.conf_dir)
    if path is not None and path.suffix == ".conflist":
        config = _load(path)
        kept = [p for p in config["plugins"] if p.get("type") != PLUGIN_TYPE]
        if kept != config["plugins"]:
            config["plugins"] = kept
            _write(path, json.dumps(config, indent=2) + "\n", 0o644)
    for leftover in (install.shim, install.kubeconfig):
        leftover.unlink(missing_ok=True)


def run(
    install: Installation, interval: float, stop: threading.Event, log: Callable[[str], None]
) -> None:
    write_shim(install)
    write_kubeconfig(install)
    try:
        while not stop.is_set():
            try:
                if insert(install):
                    log(f"proxy-injector is the last plugin of {active_conflist(install.conf_dir)}")
            except InstallError as exc:
                log(str(exc))
            stop.wait(interval)
    finally:
        remove(install)
        log("proxy-injector removed from the node's CNI config")


def from_environment(bin_dir: Path, conf_dir: Path, backend: str) -> Installation:
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port:
        raise InstallError("KUBERNETES_SERVICE_HOST/PORT are not set: run this in a pod")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    ca = SERVICE_ACCOUNT / "ca.crt"
    return Installation(
        bin_dir,
        conf_dir,
        os.getpid(),
        server,
        SERVICE_ACCOUNT / "token",
        ca if ca.exists() else None,
        backend,
    )


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
