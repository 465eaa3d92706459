"""The whole chain for real: two meshed pods (network namespaces, iptables, Envoy, nginx)
whose certificates come from `proxy-injector signer` through a stand-in kubelet that
renews them and refreshes the trust bundle the way the kubelet does, while the CA rolls
(`signer rotate-ca`) under `wrk` load: no request fails."""

from __future__ import annotations

import re
import threading
import time

import pytest
from cryptography import x509

from tests import netns
from tests.identity import create_ca
from tests.kubelet import StandInKubelet
from tests.mtls_mesh import Mesh, running_mesh, serial, wrk
from tests.processes import wait_for
from tests.signers import Signers, rotate_ca, started

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]


class Renewals:
    """The stand-in kubelet's refresh loop for both pods: a new certificate and the current
    trust bundle every ``every`` seconds, written with the ..data swap."""

    def __init__(self, kubelet: StandInKubelet, mesh: Mesh, every: float) -> None:
        self.kubelet, self.mesh, self.every = kubelet, mesh, every
        self.pods = {
            "orders": (kubelet.pod("shop", "orders-0", account="orders"), mesh.server_volume),
            "web": (kubelet.pod("shop", "web-0", account="web"), mesh.client_volume),
        }
        self.issuers: list[str] = []
        self.latest: dict[str, x509.Certificate] = {}
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def renew(self) -> None:
        for name, (pod, volume) in self.pods.items():
            issued = self.kubelet.issued("shop", self.kubelet.request(pod))
            self.kubelet.project(volume, issued)
            self.issuers.append(issued.leaf.issuer.rfc4514_string())
            self.latest[name] = issued.leaf

    def run(self) -> None:
        try:
            while not self.stop.wait(self.every):
                self.renew()
        except BaseException as exc:
            self.failure = exc


def test_the_ca_rolls_under_load_and_no_request_fails(fake, tmp_path) -> None:
    signers = Signers(fake, tmp_path)
    try:
        started(signers)
        kubelet = StandInKubelet(fake)
        with running_mesh(create_ca(common_name="bootstrap CA")) as mesh:
            renewals = Renewals(kubelet, mesh, every=1.0)
            renewals.renew()  # the signer's certificates and bundle replace the bootstrap ones
            wait_for(lambda: "bootstrap" not in mesh.server.admin("/certs")[1], 10, "signer's")
            wait_for(lambda: mesh.call("http://orders.shop:8080/")[0] == 200, 10, "a call")
            loop = threading.Thread(target=renewals.run, daemon=True)
            loop.start()
            load = wrk(mesh, 16)
            time.sleep(2)
            rotate = rotate_ca(fake, "--after", "3s")
            assert rotate.returncode == 0, rotate.stderr
            out, _ = load.communicate(timeout=60)
            renewals.stop.set()
            loop.join(timeout=30)
            assert renewals.failure is None, renewals.failure
            assert "Socket errors" not in out and "Non-2xx" not in out, out
            assert int(re.search(r"(\d+) requests in", out)[1]) > 100, out
            # The leaves moved to the new CA while the load ran, and the server serves one.
            first, last = renewals.issuers[0], renewals.issuers[-1]
            assert first != last, renewals.issuers
            newest = renewals.latest["orders"]
            assert (
                newest.issuer.rfc4514_string() == last
                or renewals.latest["web"].issuer.rfc4514_string() == last
            )
            wait_for(
                lambda: int(serial(mesh.server), 16) == newest.serial_number,
                10,
                "the server serving its newest leaf",
            )
            assert len(x509.load_pem_x509_certificates(kubelet.bundle())) == 2
    finally:
        for process in signers.processes:
            process.process.kill()
