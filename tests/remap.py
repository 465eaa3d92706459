"""Run a pod's bootstrap outside a pod: the test hook, also handy for trying a sidecar
config on a laptop.

In a pod the proxy owns ports 15000-15090, sockets live under /dev/shm, and iptables sends
traffic for app port P to the inbound listener, which picks P's filter chain from the
original destination. Outside a pod none of that holds, so ``remap`` returns a copy where

- every socket path under /dev/shm/ lives under ``socket_dir`` instead;
- every listener binds 127.0.0.1 (unless ``loopback_only`` is False, for a network
  namespace of its own), on ``proxy_ports[port]`` where the port is mapped;
- each inbound filter chain for app port P gets a listener of its own on
  ``proxy_ports[P]`` (the chain itself unchanged), since nothing redirects P to 15006;
- a cluster that reaches the app over TCP (127.0.0.1:P) reaches ``app_ports[P]``;
- the admin socket and its volume (``/var/run/proxy-admin``) live in ``admin_dir``;
- with ``identity_root``, the identity and SDS volumes' paths (mTLS) live under it.

Everything else (filters, routes, clusters, stats) is exactly what the pod would run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from webhook.engine.bootstrap.objects import Json, listener, socket_address
from webhook.engine.names import ADMIN_DIR, IDENTITY_DIR, PROXY_PORTS, SDS_DIR, SHM_MOUNT_PATH


def moved_identity(text: str, root: str | Path) -> str:
    """``text`` (a bootstrap or an SDS file) with the identity and SDS volumes' paths
    under ``root``: ``<root>/proxy-identity`` and ``<root>/proxy-sds``."""
    for directory in (IDENTITY_DIR, SDS_DIR):
        text = text.replace(directory, f"{root}/{Path(directory).name}")
    return text


def _walk(node: Any, visit: Any) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, list):
        for item in node:
            _walk(item, visit)


def moved_admin(text: str, admin_dir: str | Path) -> str:
    """``text`` (a bootstrap) with the admin volume's paths in ``admin_dir``."""
    return text.replace(ADMIN_DIR, str(admin_dir))


def _move_pipes(bootstrap: Json, socket_dir: Path) -> None:
    prefix = SHM_MOUNT_PATH + "/"

    def visit(node: Json) -> None:
        pipe = node.get("pipe")
        if isinstance(pipe, dict) and str(pipe.get("path", "")).startswith(prefix):
            pipe["path"] = str(socket_dir / pipe["path"][len(prefix) :])

    _walk(bootstrap, visit)


def _split_inbound(listeners: list[Json], proxy_ports: Mapping[int, int]) -> list[Json]:
    """A listener per mapped app port, with that port's chains (mTLS and plaintext) and the
    inbound listener's filters (the TLS inspector) but no port to match."""
    extra = []
    for item in listeners:
        if item["name"] != "inbound":
            continue
        kept, split = [], {}
        for chain in item["filter_chains"]:
            port = chain.get("filter_chain_match", {}).get("destination_port")
            if port in proxy_ports and port not in PROXY_PORTS:
                match = {
                    k: v for k, v in chain["filter_chain_match"].items() if k != "destination_port"
                }
                alone = {k: v for k, v in chain.items() if k != "filter_chain_match"}
                split.setdefault(port, []).append(
                    {**alone, **({"filter_chain_match": match} if match else {})}
                )
            else:
                kept.append(chain)
        item["filter_chains"] = kept
        filters = [f for f in item.get("listener_filters", []) if "original_dst" not in f["name"]]
        for port, chains in split.items():
            options = {
                k: item[k]
                for k in ("listener_filters_timeout", "continue_on_listener_filters_timeout")
                if k in item
            }
            for f in filters:
                f.pop("filter_disabled", None)
            extra.append(
                listener(
                    f"inbound_{port}",
                    socket_address("127.0.0.1", proxy_ports[port]),
                    chains,
                    traffic_direction=item["traffic_direction"],
                    **({"listener_filters": copy.deepcopy(filters)} if filters else {}),
                    **options,
                )
            )
    return extra


def _rebind(item: Json, ports: Mapping[int, int], loopback: bool) -> None:
    socket = item["address"].get("socket_address")
    if socket and loopback:
        socket["address"] = "127.0.0.1"
        item.pop("additional_addresses", None)
    if socket:
        socket["port_value"] = ports.get(socket["port_value"], socket["port_value"])


def remap(
    bootstrap: Json,
    *,
    socket_dir: str | Path,
    proxy_ports: Mapping[int, int],
    app_ports: Mapping[int, int] | None = None,
    loopback_only: bool = True,
    identity_root: str | Path | None = None,
    admin_dir: str | Path | None = None,
) -> Json:
    """``admin_dir``: where the admin volume is (the caller makes it, for the proxy's UID
    alone); ``<socket_dir>/proxy-admin`` unless given."""
    admin_dir = admin_dir or Path(socket_dir) / Path(ADMIN_DIR).name
    text = moved_admin(orjson.dumps(bootstrap).decode(), admin_dir)
    if identity_root is not None:
        text = moved_identity(text, identity_root)
    result = orjson.loads(text)
    _move_pipes(result, Path(socket_dir))
    listeners = result["static_resources"]["listeners"]
    for item in listeners:
        _rebind(item, proxy_ports, loopback_only)
    listeners += _split_inbound(listeners, proxy_ports)
    targets = dict(app_ports or {})

    def visit(node: Json) -> None:
        socket = node.get("socket_address")
        if isinstance(socket, dict) and socket.get("address") == "127.0.0.1":
            socket["port_value"] = targets.get(socket["port_value"], socket["port_value"])

    for cluster in result["static_resources"]["clusters"]:
        _walk(cluster.get("load_assignment", {}), visit)
    return result
