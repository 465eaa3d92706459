"""Real databases as meshed apps: Debian's ``redis-server``, PostgreSQL and MariaDB as the
app containers of a server pod ``db-0`` (namespace shop, service account db), and their
own clients (``redis-cli``, ``psql``, ``mariadb``) in a client pod ``app-0`` whose sidecar
declares them as TCP upstreams. Each pod is a network namespace with its init container's
rules and Envoy running the generated bootstrap; ``switch`` moves both to another mTLS
mode (off, permissive, strict), as a restart with another mesh config would."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests import netns
from tests.identity import KeyPair, ProjectedVolume, leaf, spiffe
from tests.meshed_pod import MeshedPod
from tests.processes import shared_folder, wait_for
from tests.support import apply
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping

SERVER = netns.POD_V4
POSTGRES_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/nonexistent"))
"""Debian's PostgreSQL server binaries (initdb, postgres): not on PATH."""
CLIENT_USER = "nobody"
"""The client app's user: any UID but the proxy's is redirected to its sidecar."""
UPSTREAMS = "redis.shop:6379/tcp,pg.shop:5432/tcp,maria.shop:3306/tcp"
PORTS = {"redis": 6379, "postgres": 5432, "mysql": 3306}


def mesh_config(mode: str) -> MeshConfig:
    if mode == "off":
        return MeshConfig()
    return from_mapping({"mtls": {"identity": "pod-certificate", "mode": mode}})


def _injected(pod: dict, mode: str) -> dict:
    result = inject(pod, "shop", mesh_config(mode))
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


def server_spec(mode: str) -> dict:
    """The databases listen on 127.0.0.1, where their sidecar reaches them (upstream tcp);
    MariaDB speaks first, so its port is hinted TCP."""
    containers = [
        {"name": name, "image": f"{name}:latest", "ports": [{"name": name, "containerPort": port}]}
        for name, port in PORTS.items()
    ]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "db-0",
            "annotations": {"proxy.io/upstream": "tcp", "proxy.io/tcp-ports": "mysql"},
        },
        "spec": {"serviceAccountName": "db", "containers": containers},
    }
    return _injected(pod, mode)


def client_spec(mode: str, upstreams: str = UPSTREAMS) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app-0", "annotations": {"proxy.io/upstreams": upstreams}},
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "app:1", "ports": []}],
        },
    }
    return _injected(pod, mode)


class Databases:
    """The three servers, each as its Debian user, in the server pod's namespace."""

    def __init__(
        self,
        net: netns.Network,
        root: Path,
        prefix: tuple[str, ...] = (),
        address: str = "127.0.0.1",
    ) -> None:
        """``prefix``: run before each server inside the namespace (a benchmark's taskset);
        ``address``: where they listen (loopback, where their sidecar reaches them)."""
        self.net, self.root, self.prefix, self.address = net, root, prefix, address

    def _as(self, user: str, *command: str, **popen) -> subprocess.Popen:
        return self.net.start(
            self.net.pod, *self.prefix, "runuser", "-u", user, "--", *command, **popen
        )

    def start(self, names: tuple[str, ...] = tuple(PORTS)) -> None:
        """``names``: of PORTS, the servers to start (all three by default)."""
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if "redis" in names:
            self._as(
                "redis", "redis-server", "--bind", self.address, "--port", "6379", "--save", "",
                "--appendonly", "no", "--protected-mode", "no", **quiet,
            )  # fmt: skip
        if "postgres" in names:
            self._postgres(quiet)
        if "mysql" in names:
            self._mariadb(quiet)
        for name in names:
            port = PORTS[name]
            wait_for(lambda p=port: self._listening(p), 60, f"{name} on port {port}")

    def _postgres(self, quiet: dict) -> None:
        data = self.root / "postgres"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(POSTGRES_BIN / "initdb"), "-D", str(data),
             "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        if self.address != "127.0.0.1":  # clients come from other pods' addresses
            with (data / "pg_hba.conf").open("a") as rules:
                rules.write("host all all 0.0.0.0/0 trust\n")
        self._as(
            "postgres", str(POSTGRES_BIN / "postgres"), "-D", str(data),
            "-c", f"listen_addresses={self.address}", "-p", "5432",
            "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off", **quiet,
        )  # fmt: skip

    def _mariadb(self, quiet: dict) -> None:
        maria = self.root / "mariadb"
        subprocess.run(
            ["runuser", "-u", "mysql", "--", "mariadb-install-db", "--no-defaults",
             f"--datadir={maria}", "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self._as(
            "mysql", "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={maria}",
            f"--socket={self.root}/mariadb.sock", "--port=3306", f"--bind-address={self.address}",
            "--skip-name-resolve", f"--pid-file={self.root}/mariadb.pid",
            f"--log-error={self.root}/mariadb.err", **quiet,
        )  # fmt: skip

    def _listening(self, port: int) -> bool:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
        return self.net.run(self.net.pod, sys.executable, "-c", probe).returncode == 0


class DbMesh:
    def __init__(self, net: netns.Network, root: Path, ca: KeyPair) -> None:
        self.net, self.root, self.ca = net, root, ca
        for name in ("db", "app"):
            (root / name).mkdir()
            (root / name).chmod(0o755)
        self.server = MeshedPod(net, root / "db", "nft", server_spec("permissive"))
        self.client = MeshedPod(
            net, root / "app", "nft", client_spec("permissive"), namespace=net.client
        )
        self.mode = ""
        for pod, account in ((self.server, "db"), (self.client, "app")):
            volume = ProjectedVolume(pod.identity_root / "proxy-identity")
            volume.pod_certificate(leaf(ca, spiffe("shop", account)), ca)

    def switch(self, mode: str, upstreams: str = UPSTREAMS) -> None:
        """Both sidecars as the mesh config of ``mode`` makes them (the client's declaring
        ``upstreams``), restarted."""
        for pod, spec in (
            (self.server, server_spec(mode)),
            (self.client, client_spec(mode, upstreams)),
        ):
            if pod.envoy is not None:
                pod.envoy.kill()
                pod.envoy.wait(timeout=10)
            pod.spec = spec
            pod.start_envoy()
        self.mode = mode

    def client_run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``command`` as the client pod's app (redirected to its sidecar)."""
        return self.net.run(
            self.net.client, "runuser", "-u", CLIENT_USER, "--", *command, timeout=timeout
        )

    def first_bytes_after(self, host: str, port: int, *, bypass: bool = False) -> float:
        """Seconds from connecting to ``host:port`` to the server's first bytes (a
        server-first greeting), as the client app (or, ``bypass``, as a client that is
        not meshed: the proxy's own UID, which its rules leave alone)."""
        # bash and coreutils: the venv's Python may sit where other users cannot run it.
        script = (
            f"exec 3<>/dev/tcp/{host}/{port} || exit 3; start=$(date +%s%N); "
            "head -c 1 <&3 >/dev/null; echo $(( $(date +%s%N) - start ))"
        )
        user = ["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups"]
        if not bypass:
            user = ["runuser", "-u", CLIENT_USER, "--"]
        done = self.net.run(self.net.client, *user, "timeout", "30", "bash", "-c", script)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip()) / 1e9


@contextlib.contextmanager
def running_databases(ca: KeyPair) -> Iterator[DbMesh]:
    """The two pods, the databases serving, the client's names resolving to the server."""
    if shutil.which("iptables-nft-restore") is None:
        raise AssertionError("iptables-nft is missing (scripts/test installs Debian's iptables)")
    missing = [name for name in ("redis-server", "mariadbd", "psql") if not _installed(name)]
    if missing or not (POSTGRES_BIN / "postgres").exists():
        raise AssertionError(f"not installed: {missing} (scripts/test installs them)")
    net = netns.Network().create()
    folder = Path("/etc/netns") / net.client
    try:
        folder.mkdir(parents=True, exist_ok=True)
        names = " ".join(f"{n}.shop" for n in ("redis", "pg", "maria"))
        (folder / "hosts").write_text(f"127.0.0.1 localhost\n{SERVER} {names}\n")
        root = shared_folder()
        the_mesh = DbMesh(net, root, ca)
        for pod in (the_mesh.server, the_mesh.client):
            applied = pod.run_init()
            assert applied.returncode == 0, applied.stderr
        data = root / "data"
        data.mkdir()
        data.chmod(0o777)
        Databases(net, data).start()
        yield the_mesh
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        net.destroy()


def _installed(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()
