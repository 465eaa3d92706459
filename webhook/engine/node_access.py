"""What a pod may reach on its node: the node's /dev/shm and IPC namespace
(``proxy.io/shm: host``) and node directories holding an agent's socket
(``proxy.io/node-sockets``).

Both break pod isolation (Pod Security's baseline profile forbids hostIPC and hostPath), so
the mesh config allows them per namespace (``nodeShm.namespaces``) and per directory
(``nodeShm.socketDirs``), and the pod gets no more than it asked for. In host mode the app's
sockets leave /dev/shm for the pod's own volume at ``socketDir``, so nothing of ours is ever
written to the node's shared memory, and the proxy keeps a private /dev/shm.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from webhook.engine import pod as pods
from webhook.engine import sockets
from webhook.engine.annotations import Overrides
from webhook.engine.config import MeshConfig
from webhook.engine.json_object import Json
from webhook.engine.names import NODE_SHM_VOLUME, NODE_SOCKETS_VOLUME, SHM_MOUNT_PATH
from webhook.engine.values import quote, under

SOCKET_VOLUME_SIZE = "1Mi"
"""sizeLimit of the pod's own volume in host mode: it holds sockets, which take no space."""


@dataclass(frozen=True, slots=True)
class NodeAccess:
    host_shm: bool
    socket_dirs: tuple[str, ...]
    """Node directories mounted at the same path in the app containers."""
    socket_root: str
    """Where the app's sockets live: /dev/shm, or the mesh config's socketDir in host mode."""

    def socket_path(self, path: str) -> str:
        """A socket path under /dev/shm (from the udsPath template) moved to socket_root."""
        return sockets.relocate(path, self.socket_root)

    @property
    def volume_names(self) -> list[str]:
        names = [NODE_SHM_VOLUME] if self.host_shm else []
        return names + [NODE_SOCKETS_VOLUME.format(index=i) for i in range(len(self.socket_dirs))]


def decide(overrides: Overrides, config: MeshConfig) -> NodeAccess:
    host = overrides.shm == "host"
    return NodeAccess(
        host_shm=host,
        socket_dirs=overrides.node_sockets or (),
        socket_root=config.socket_dir if host else SHM_MOUNT_PATH,
    )


def refusals(access: NodeAccess, namespace: str, config: MeshConfig) -> list[str]:
    """Why the mesh config does not allow what the pod asks for (empty: it does)."""
    problems = []
    allowed = namespace in config.node_shm.namespaces
    if access.host_shm and not allowed:
        problems.append(
            f'annotation proxy.io/shm: "host" is not allowed in namespace {quote(namespace)}: '
            "it gives the pod hostIPC and the node's /dev/shm; list the namespace in mesh "
            "config nodeShm.namespaces to allow it"
        )
    if access.socket_dirs and not allowed:
        problems.append(
            f"annotation proxy.io/node-sockets is not allowed in namespace {quote(namespace)}: "
            "it mounts node directories into the pod; list the namespace in mesh config "
            "nodeShm.namespaces to allow it"
        )
    permitted = config.node_shm.socket_dirs
    listed = ", ".join(permitted) if permitted else "empty"
    for directory in access.socket_dirs:
        if not any(under(directory, prefix) for prefix in permitted):
            problems.append(
                f"annotation proxy.io/node-sockets: {quote(directory)} is not under a directory "
                f"in mesh config nodeShm.socketDirs ({listed}); add it there to allow it"
            )
    return problems


def pod_problems(
    access: NodeAccess, apps: Iterable[pods.Container], overrides: Overrides, config: MeshConfig
) -> list[str]:
    """What in the pod contradicts the node access it asks for."""
    if not (access.host_shm or access.socket_dirs):
        return []  # the common case: no mount to compare, on the admission path
    problems = []
    if access.host_shm and overrides.shm_size is not None:
        problems.append(
            "annotation proxy.io/shm-size sizes the pod's own /dev/shm, which "
            'proxy.io/shm: "host" replaces with the node\'s; remove one of them'
        )
    for directory in access.socket_dirs:
        if under(directory, SHM_MOUNT_PATH) or under(directory, access.socket_root):
            ours = "/dev/shm" if under(directory, SHM_MOUNT_PATH) else "socket directory"
            problems.append(
                f"annotation proxy.io/node-sockets: {quote(directory)} is inside the pod's "
                f"{ours}; a node agent's socket directory must be elsewhere"
            )
    ours = {SHM_MOUNT_PATH: "the node's /dev/shm"} if access.host_shm else {}
    if access.host_shm:
        ours[config.socket_dir] = "the pod's sockets (mesh config socketDir)"
    ours.update((d, "a node directory (proxy.io/node-sockets)") for d in access.socket_dirs)
    for app in apps:
        for path, volume in app.mounts.items():
            if path in ours:
                problems.append(
                    f"container {app.name} mounts volume {volume} at {path}, where the "
                    f"injector mounts {ours[path]}"
                )
    return problems


def volumes(access: NodeAccess) -> list[Json]:
    found = []
    if access.host_shm:
        found.append(_host_path(NODE_SHM_VOLUME, SHM_MOUNT_PATH))
    found += [
        _host_path(NODE_SOCKETS_VOLUME.format(index=i), directory)
        for i, directory in enumerate(access.socket_dirs)
    ]
    return found


def _host_path(name: str, path: str) -> Json:
    return {"name": name, "hostPath": {"path": path, "type": "Directory"}}


def app_mounts(access: NodeAccess, pod_volume: str) -> list[Json]:
    """Mounts each app container gets: the pod's volume where its sockets are, the node's
    /dev/shm in host mode, and the node directories."""
    mounts = [{"name": pod_volume, "mountPath": access.socket_root}]
    if access.host_shm:
        mounts.append({"name": NODE_SHM_VOLUME, "mountPath": SHM_MOUNT_PATH})
    mounts += [
        {"name": NODE_SOCKETS_VOLUME.format(index=i), "mountPath": directory}
        for i, directory in enumerate(access.socket_dirs)
    ]
    return mounts


def proxy_mounts(access: NodeAccess, pod_volume: str) -> list[Json]:
    """The proxy's: the pod's volume where the sockets are and, in host mode, also at
    /dev/shm, where the container runtime would otherwise put the node's for a hostIPC pod."""
    mounts = [{"name": pod_volume, "mountPath": SHM_MOUNT_PATH}]
    if access.host_shm:
        mounts.append({"name": pod_volume, "mountPath": access.socket_root})
    return mounts


def pod_volume_size(access: NodeAccess, size: str) -> str:
    return SOCKET_VOLUME_SIZE if access.host_shm else size


def warnings(access: NodeAccess) -> list[str]:
    granted = (["hostIPC and the node's /dev/shm"] if access.host_shm else []) + (
        ["node directories"] if access.socket_dirs else []
    )
    if not granted:
        return []
    return [
        f"this pod gets {' and '.join(granted)} (proxy.io/shm, proxy.io/node-sockets): "
        "Pod Security's baseline profile rejects such pods"
    ]
