"""A pod on a network of its own: two network namespaces the test creates (a client and a
pod) joined by a veth pair, with addresses that exist only inside them.

Everything is removed at exit, processes first, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import wait_for

POD_V4, CLIENT_V4, CLIENT_V4_OTHER = "10.231.0.2", "10.231.0.1", "10.231.1.1"
POD_V6, CLIENT_V6, CLIENT_V6_OTHER = "fd31::2", "fd31::1", "fd31:1::1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def available() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root for ip netns and iptables"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    return None


def ipv6_available() -> bool:
    return os.path.exists("/proc/net/if_inet6")


@dataclass
class Network:
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def client(self) -> str:
        return f"pi-client-{self.suffix}"

    @property
    def pod(self) -> str:
        return f"pi-pod-{self.suffix}"

    def exec(self, namespace: str, *command: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *command]

    def run(
        self, namespace: str, *command: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.exec(namespace, *command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, namespace: str, *command: str, **popen) -> subprocess.Popen:
        process = subprocess.Popen(self.exec(namespace, *command), **popen)
        self.processes.append(process)
        return process

    def create(self) -> Network:
        client_if, pod_if = f"pic{self.suffix}", f"pip{self.suffix}"
        _ip("netns", "add", self.client)
        _ip("netns", "add", self.pod)
        _ip("link", "add", client_if, "type", "veth", "peer", "name", pod_if)
        _ip("link", "set", client_if, "netns", self.client)
        _ip("link", "set", pod_if, "netns", self.pod)
        for namespace, iface, addresses in (
            (self.client, client_if, [f"{CLIENT_V4}/24", f"{CLIENT_V4_OTHER}/24"]),
            (self.pod, pod_if, [f"{POD_V4}/24"]),
        ):
            _ip("-n", namespace, "link", "set", "lo", "up")
            for address in addresses:
                _ip("-n", namespace, "addr", "add", address, "dev", iface)
            _ip("-n", namespace, "link", "set", iface, "up")
        _ip("-n", self.pod, "route", "add", "10.231.1.0/24", "via", CLIENT_V4)
        if ipv6_available():
            for address in (f"{CLIENT_V6}/64", f"{CLIENT_V6_OTHER}/64"):
                _ip("-n", self.client, "-6", "addr", "add", address, "dev", client_if, "nodad")
            _ip("-n", self.pod, "-6", "addr", "add", f"{POD_V6}/64", "dev", pod_if, "nodad")
            _ip("-n", self.pod, "-6", "route", "add", "fd31:1::/64", "via", CLIENT_V6)
        return self

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for namespace in (self.client, self.pod):
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(
                ["ip", "netns", "del", namespace], capture_output=True, timeout=30, check=False
            )

    def serve_http(self, namespace: str, address: str, port: int, folder: Path, name: str) -> None:
        """Python's http.server on ``address`` (``::``: every address, IPv4 too), serving
        ``/who.txt`` with ``name``; waits until it answers."""
        root = folder / f"site-{name}"
        root.mkdir()
        (root / "who.txt").write_text(f"{name}\n")
        self.start(
            namespace,
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            address,
            "--directory",
            str(root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        host = "[::1]" if address == "::" else f"[{address}]" if ":" in address else address
        wait_for(
            lambda: self.curl(namespace, f"http://{host}:{port}/who.txt")[0] == 200,
            20,
            f"{name} serving",
        )

    def curl(self, namespace: str, url: str, *, as_uid: int | None = None) -> tuple[int, str]:
        """HTTP status and body of a GET made inside ``namespace`` (0 when it failed)."""
        command = ["curl", "-s", "-g", "--max-time", "5", "-w", "\\n%{http_code}", url]
        if as_uid is not None:
            command = [
                "setpriv",
                "--reuid",
                str(as_uid),
                "--regid",
                str(as_uid),
                "--clear-groups",
                *command,
            ]
        result = self.run(namespace, *command, timeout=30)
        body, _, code = result.stdout.rpartition("\n")
        return int(code or 0), body.rstrip("\n")
