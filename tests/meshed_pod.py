"""An injected pod for real inside a network namespace the test made: the init container's
rules applied by `proxy-injector init-iptables` with exactly the flags the engine put in
the pod, and Envoy (UID 1337) running the pod's generated bootstrap on the real ports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import netns
from tests.processes import proxy_envoy, stat_value, wait_for
from tests.support import apply, bootstrap_of, container
from webhook.engine import Outcome, inject
from webhook.engine.bootstrap.remap import moved_identity, remap
from webhook.engine.config import MeshConfig
from webhook.engine.names import SDS_IDENTITY_KEY, SDS_TRUST_BUNDLE_KEY

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

    def init_args(self) -> list[str]:
        init = container(self.spec, "proxy-init", "initContainers")
        assert init["command"] == ["proxy-injector"]
        return [*init["args"], "--iptables-backend", self.backend]

    def run_init(self) -> subprocess.CompletedProcess[str]:
        return self.net.run(self.namespace, *CLI, *self.init_args())

    def as_proxy(self, *command: str) -> list[str]:
        """``command`` inside the pod as the proxy's user, as the proxy container runs it."""
        ids = ["--reuid", "1337", "--regid", "1337", "--clear-groups"]
        return self.net.exec(self.namespace, "setpriv", *ids, *command)

    def proxy_flags(self, *names: str) -> list[str]:
        """These flags of the proxy container, with the values the engine gave them."""
        proxies = [*self.spec["spec"]["containers"], *self.spec["spec"]["initContainers"]]
        args = next(c for c in proxies if c["name"] == "proxy")["args"]
        return [part for i, a in enumerate(args) if a in names for part in args[i : i + 2]]

    @property
    def identity_root(self) -> Path:
        """Where the pod's identity and SDS volumes live (``proxy-identity``, ``proxy-sds``)."""
        return self.folder / "volumes"

    def write_sds_volume(self) -> None:
        """What the downward API writes from the pod's SDS annotations, paths moved."""
        sds = self.identity_root / "proxy-sds"
        sds.mkdir(parents=True, exist_ok=True)
        self.identity_root.chmod(0o755)
        sds.chmod(0o755)
        annotations = self.spec["metadata"]["annotations"]
        for key, name in (
            (SDS_IDENTITY_KEY, "identity.json"),
            (SDS_TRUST_BUNDLE_KEY, "trust-bundle.json"),
        ):
            (sds / name).write_text(moved_identity(annotations[key], self.identity_root))
            (sds / name).chmod(0o644)

    def start_envoy(
        self, workers: int = 1, prefix: tuple[str, ...] = (), config: dict | None = None
    ) -> None:
        """Envoy with ``workers`` threads; ``prefix`` runs before it (e.g. taskset);
        ``config`` instead of the pod's bootstrap (a benchmark's yardstick)."""
        meshed = SDS_IDENTITY_KEY in self.spec["metadata"].get("annotations", {})
        if meshed:
            self.write_sds_volume()
        config = config or remap(
            json.loads(bootstrap_of(self.spec)),
            socket_dir=self.folder,
            proxy_ports={},
            loopback_only=False,
            identity_root=self.identity_root if meshed else None,
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
        self.envoy = subprocess.Popen(
            [*prefix, *self.as_proxy(proxy_envoy(), "-c", str(path), *flags)],
            cwd="/",
            stdout=log,
            stderr=log,
        )
        self.net.processes.append(self.envoy)
        wait_for(lambda: self.admin("/ready")[0] == 200, 30, "Envoy ready in the pod")

    def admin(self, path: str) -> tuple[int, str]:
        return self.net.curl(self.namespace, f"http://127.0.0.1:15000{path}")

    def stat(self, name: str) -> int:
        return stat_value(self.admin("/stats?format=json")[1], name)
