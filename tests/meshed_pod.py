"""An injected pod for real inside a network namespace the test made: the init container's
rules applied by `proxy-injector init-iptables` with exactly the flags the engine put in
the pod, and Envoy (UID 1337) running the pod's generated bootstrap on the real ports."""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests import netns
from tests.processes import admin_request, proxy_envoy, proxy_only_folder, stat_value, wait_for
from tests.remap import moved_identity, remap
from tests.support import apply, bootstrap_of, container
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig
from webhook.engine.names import ADMIN_SOCKET, SDS_DIR
from webhook.node import sds

CLI = [sys.executable, "-m", "webhook"]


def injected(pod: dict) -> dict:
    result = inject(pod, "shop", MeshConfig())
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


class MeshedPod:
    def __init__(
        self,
        net: netns.Network,
        folder: Path,
        backend: str,
        spec: dict,
        namespace: str | None = None,
    ) -> None:
        self.net, self.folder, self.backend, self.spec = net, folder, backend, spec
        self.namespace = namespace or net.pod
        """The network namespace the pod lives in (the client's, for a client pod)."""
        self.envoy: subprocess.Popen | None = None
        self.app: subprocess.Popen | None = None
        for outside in (self.identity_root, self.admin_socket.parent):
            atexit.register(shutil.rmtree, outside, True)

    def init_args(self) -> list[str]:
        """proxy-init's args, the SDS volume's paths moved under ``identity_root``."""
        init = container(self.spec, "proxy-init", "initContainers")
        assert init["command"] == ["proxy-injector"]
        args = [moved_identity(arg, self.identity_root) for arg in init["args"]]
        if "--sds-dir" in args:
            self.sds_dir.mkdir(parents=True, exist_ok=True)
            self.identity_root.chmod(0o755)
            self.sds_dir.chmod(0o755)
        return [*args, "--iptables-backend", self.backend]

    def run_init(self) -> subprocess.CompletedProcess[str]:
        return self.net.run(self.namespace, *CLI, *self.init_args())

    def as_proxy(self, *command: str) -> list[str]:
        """``command`` inside the pod as the proxy's user, as the proxy container runs it."""
        ids = ["--reuid", "1337", "--regid", "1337", "--clear-groups"]
        return self.net.exec(self.namespace, "setpriv", *ids, *command)

    def proxy_env(self) -> dict[str, str]:
        """The proxy container's literal env values, ``$(POD_NAME)`` and ``$(POD_NAMESPACE)``
        expanded as the kubelet expands them (the pod's name; namespace shop)."""
        known = {"POD_NAME": self.spec["metadata"].get("name", "pod"), "POD_NAMESPACE": "shop"}
        found = {}
        for item in container(self.spec, "proxy").get("env", []):
            if "value" in item:
                value = item["value"]
                for name, replacement in known.items():
                    value = value.replace(f"$({name})", replacement)
                found[item["name"]] = value
        return found

    def proxy_flags(self, *names: str) -> list[str]:
        """These flags of the proxy container, with the values the engine gave them."""
        proxies = [*self.spec["spec"]["containers"], *self.spec["spec"]["initContainers"]]
        args = next(c for c in proxies if c["name"] == "proxy")["args"]
        return [part for i, a in enumerate(args) if a in names for part in args[i : i + 2]]

    @property
    def identity_root(self) -> Path:
        """Where the pod's identity and SDS volumes live (``proxy-identity``, ``proxy-sds``):
        beside the folder that stands for the pod's /dev/shm, not in it, since in a pod the
        app containers mount the one and not the others."""
        return self.folder.with_name(self.folder.name + "-volumes")

    @property
    def sds_dir(self) -> Path:
        return self.identity_root / Path(SDS_DIR).name

    @property
    def meshed(self) -> bool:
        """mTLS: the init container (proxy-init, or proxy-validate) writes SDS files."""
        return any("--sds-dir" in c.get("args", []) for c in self.spec["spec"]["initContainers"])

    def write_sds_volume(self) -> None:
        """What proxy-init writes from its args (``run_init`` does it for real), for a proxy
        restarted with a new spec."""
        init = next(c for c in self.spec["spec"]["initContainers"] if "--sds-dir" in c["args"])
        args = [moved_identity(arg, self.identity_root) for arg in init["args"]]
        self.sds_dir.mkdir(parents=True, exist_ok=True)
        self.identity_root.chmod(0o755)
        self.sds_dir.chmod(0o755)
        files = [args[i + 1] for i, arg in enumerate(args) if arg == "--sds-file"]
        sds.write(self.sds_dir, sds.parse(files))

    @property
    def admin_socket(self) -> Path:
        """In the admin volume, which is the proxy's alone (beside /dev/shm too)."""
        return self.folder.with_name(self.folder.name + "-admin") / Path(ADMIN_SOCKET).name

    def start_envoy(
        self,
        workers: int = 1,
        prefix: tuple[str, ...] = (),
        config: dict | None = None,
        wrapper: tuple[str, ...] = (),
        ready_seconds: float = 30,
    ) -> None:
        """Envoy with ``workers`` threads; ``prefix`` runs before it (e.g. taskset),
        ``wrapper`` runs Envoy itself, as the proxy's user (e.g. valgrind; may start with
        NAME=VALUE settings); ``config`` instead of the pod's bootstrap (a benchmark's
        yardstick)."""
        meshed = self.meshed
        if meshed:
            self.write_sds_volume()
        admin_dir = proxy_only_folder(self.admin_socket.parent)
        config = config or remap(
            json.loads(bootstrap_of(self.spec)),
            socket_dir=self.folder,
            proxy_ports={},
            loopback_only=False,
            identity_root=self.identity_root if meshed else None,
            admin_dir=admin_dir,
        )
        path = self.folder / "bootstrap.json"
        path.write_text(json.dumps(config))
        path.chmod(0o644)
        log = (self.folder / "envoy.log").open("w")
        flags = [
            "--disable-hot-restart",
            "--concurrency",
            str(workers),
            "--log-level",
            "warning",
            *self.proxy_flags("--drain-time-s", "--drain-strategy"),
            *["--service-node", "pod.ns", "--service-cluster", "ns"],
        ]
        extra = [f"{name}={value}" for name, value in self.proxy_env().items()]
        command = self.as_proxy("env", *extra, *wrapper, proxy_envoy(), "-c", str(path), *flags)
        self.envoy = subprocess.Popen(
            [*prefix, *command],
            cwd="/",
            stdout=log,
            stderr=log,
        )
        self.net.processes.append(self.envoy)
        wait_for(lambda: self.admin("/ready")[0] == 200, ready_seconds, "Envoy ready in the pod")

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        """Envoy's admin API, over its socket (as root, which may open it)."""
        return admin_request(self.admin_socket, path, method)

    def stat(self, name: str) -> int:
        return stat_value(self.admin("/stats?format=json")[1], name)
