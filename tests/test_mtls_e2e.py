"""Mutual TLS between two meshed pods, for real: each pod a network namespace with the init
container's iptables rules, Envoy (UID 1337) running the generated bootstrap, and
certificates minted here (an ECDSA CA, SPIFFE URI SANs) laid out as the kubelet writes a
projected volume. The client pod ``web`` calls the server pod ``orders`` (namespace shop)
through its sidecar; the server's app is nginx, on its Unix socket (8080) and on TCP
(8081 HTTP, 9000 a TCP port)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator

import pytest

from tests import netns
from tests.identity import ProjectedVolume, create_ca, forged, leaf, spiffe
from tests.mtls_mesh import (
    SERVER,
    Mesh,
    client_spec,
    running_mesh,
    serial,
    server_spec,
    wrk,
)
from tests.processes import stat_value, wait_for
from webhook.engine.config import from_mapping

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with running_mesh(create_ca(common_name="mesh CA")) as running:
        yield running


def test_a_call_goes_over_mtls_and_the_server_knows_the_caller(mesh: Mesh) -> None:
    for port, answer in ((8080, "orders-8080.sock"), (8081, "8081"), (9000, "9000")):
        status, body = mesh.call(f"http://orders.shop:{port}/")
        assert (status, body) == (200, f"hello from nginx {answer}"), port
    stats = mesh.server.admin("/stats?format=json")[1]
    assert stat_value(stats, "http.inbound_8080_mtls.downstream_cx_total") >= 1
    assert stat_value(stats, "http.inbound_8081_mtls.downstream_cx_total") >= 1
    assert stat_value(stats, "tcp.inbound_9000_mtls.downstream_cx_total") >= 1
    assert stat_value(stats, "listener.inbound.ssl.handshake") >= 3
    # The app is told who called, and the server's access log says it too.
    status, body = mesh.call("http://orders.shop:8080/xfcc")
    assert status == 200 and f"URI={spiffe('shop', 'web')}" in body
    assert f"peer={spiffe('shop', 'web')}" in (mesh.server.folder / "envoy.log").read_text()
    assert mesh.readiness(mesh.client, "/upstream-transport")[1].splitlines()[:3] == [
        "orders.shop:8080 mtls",
        "orders.shop:8081 mtls",
        "orders.shop:9000 mtls",
    ]


def test_permissive_serves_a_plaintext_client_and_counts_it(mesh: Mesh) -> None:
    before = mesh.readiness(mesh.server, "/mtls")[1]
    assert mesh.plaintext(f"http://{SERVER}:8080/") == (200, "hello from nginx orders-8080.sock")
    after = mesh.readiness(mesh.server, "/mtls")[1]
    plaintext = [int(re.search(r"plaintext=(\d+)", t.splitlines()[0])[1]) for t in (before, after)]
    assert plaintext[1] == plaintext[0] + 1
    assert re.fullmatch(
        r"8080 permissive mtls=[1-9]\d* plaintext=\d+ denied=0", after.splitlines()[0]
    )


def test_an_upstream_that_is_not_meshed_works_in_permissive(mesh: Mesh) -> None:
    assert mesh.call("http://plain.shop:7070/") == (200, "hello from nginx 7070")
    assert "plain.shop:7070 plaintext" in mesh.readiness(mesh.client, "/upstream-transport")[1]


def test_upstreams_without_retries_keep_mtls_and_the_plaintext_fallback(mesh: Mesh) -> None:
    no_retries = {"proxy.io/upstream-retries": "plain.shop:7070=0,orders.shop:8080=0"}
    mesh.restart(mesh.client, client_spec(no_retries))
    try:
        assert mesh.call("http://plain.shop:7070/") == (200, "hello from nginx 7070")
        assert mesh.call("http://orders.shop:8080/")[0] == 200
        transport = mesh.readiness(mesh.client, "/upstream-transport")[1]
        assert "plain.shop:7070 plaintext" in transport
        assert "orders.shop:8080 mtls" in transport
    finally:
        mesh.restart(mesh.client, client_spec())


def test_peers_from_another_ca_or_trust_domain_are_refused_and_counted(mesh: Mesh) -> None:
    assert mesh.peer(leaf(mesh.ca, spiffe("shop", "web"))).startswith("HTTP/1.1 200")
    stranger_ca = create_ca(common_name="another CA")
    before = mesh.server.stat("listener.inbound.ssl.fail_verify_error")
    answer = mesh.peer(leaf(stranger_ca, spiffe("shop", "web")), mesh.ca)
    assert answer.startswith("refused") or "HTTP/1.1" not in answer
    assert mesh.server.stat("listener.inbound.ssl.fail_verify_error") == before + 1
    before = mesh.server.stat("listener.inbound.ssl.fail_verify_san")
    answer = mesh.peer(leaf(mesh.ca, spiffe("shop", "web", trust_domain="other.org")))
    assert answer.startswith("refused") or "HTTP/1.1" not in answer
    assert mesh.server.stat("listener.inbound.ssl.fail_verify_san") == before + 1


def test_allow_from_lets_only_its_peers_in(mesh: Mesh) -> None:
    allowing = server_spec({"proxy.io/allow-from": "ns/shop/sa/web"})
    mesh.restart(mesh.server, allowing)
    try:
        wait_for(lambda: mesh.call("http://orders.shop:8080/")[0] == 200, 20, "web allowed")
        denied = mesh.peer(leaf(mesh.ca, spiffe("shop", "intruder")))
        assert denied.startswith("HTTP/1.1 403") and "RBAC: access denied" in denied
        assert mesh.server.stat("http.inbound_8080_mtls.rbac.denied") == 1
        closed = mesh.peer(leaf(mesh.ca, spiffe("shop", "intruder")), port=9000)
        assert "200" not in closed.splitlines()[0]
        assert mesh.server.stat("tcp.inbound_9000_mtls.rbac.denied") == 1
        # allow-from refuses plaintext, whatever the mode.
        assert mesh.plaintext(f"http://{SERVER}:8080/")[0] == 0
        assert "8080 strict" in mesh.readiness(mesh.server, "/mtls")[1]
    finally:
        mesh.restart(mesh.server, server_spec())


def test_strict_refuses_plaintext_and_probes_still_pass(mesh: Mesh) -> None:
    strict = server_spec({"proxy.io/mtls": "strict"})
    mesh.restart(mesh.server, strict)
    try:
        assert mesh.call("http://orders.shop:8080/")[0] == 200
        assert mesh.plaintext(f"http://{SERVER}:8080/")[0] == 0
        assert mesh.plaintext(f"http://{SERVER}:9000/")[0] == 0
        # Every probe of the pod goes to 15021 and passes there: the kubelet's view.
        containers = strict["spec"]["containers"]
        probes = [
            c[kind]
            for c in containers
            for kind in ("readinessProbe", "livenessProbe", "startupProbe")
            if kind in c
        ]
        assert {p["httpGet"]["port"] for p in probes} == {15021}
        for probe in [
            *probes,
            next(
                c for c in [*containers, *strict["spec"]["initContainers"]] if c["name"] == "proxy"
            )["readinessProbe"],
        ]:
            status, body = mesh.readiness(mesh.server, probe["httpGet"]["path"])
            assert status == 200, (probe, body)
    finally:
        mesh.restart(mesh.server, server_spec())


def test_strict_calls_only_mtls_upstreams(mesh: Mesh) -> None:
    strict = client_spec({"proxy.io/mtls": "strict"})
    mesh.restart(mesh.client, strict)
    try:
        assert mesh.call("http://orders.shop:8080/")[0] == 200
        status, _ = mesh.call("http://plain.shop:7070/")
        assert status == 503
    finally:
        mesh.restart(mesh.client, client_spec())


@pytest.mark.parametrize("mode", ["permissive", "strict"])
def test_a_pinned_identity_the_server_does_not_have_is_refused_and_counted(
    mesh: Mesh, mode: str
) -> None:
    """A pin says the upstream is meshed: mTLS only, in permissive too (no plaintext)."""
    pinned = client_spec(
        {
            "proxy.io/mtls": mode,
            "proxy.io/upstream-identities": "orders.shop:8080=ns/shop/sa/payments",
        }
    )
    mesh.restart(mesh.client, pinned)
    try:
        assert mesh.call("http://orders.shop:8080/")[0] == 503
        assert mesh.client.stat("cluster.outbound|8080||orders.shop.ssl.fail_verify_san") >= 1
        report = mesh.readiness(mesh.client, "/upstream-transport")[1]
        assert "orders.shop:8080 mtls" in report  # never plaintext
        assert mesh.call("http://orders.shop:8081/")[0] == 200  # its peer: any of shop
    finally:
        mesh.restart(mesh.client, client_spec())


def test_rotation_under_load_loses_nothing(mesh: Mesh) -> None:
    pid = mesh.server.envoy.pid
    load = wrk(mesh, 14)
    serials = [serial(mesh.server)]
    time.sleep(2)
    for _ in range(2):  # the leaf renewed twice
        mesh.server_volume.pod_certificate(leaf(mesh.ca, spiffe("shop", "orders")), mesh.ca)
        wait_for(lambda: serial(mesh.server) not in serials, 10, "the new leaf served")
        serials.append(serial(mesh.server))
        assert f"serial={int(serials[-1], 16):x} " in mesh.peer(mesh.client_leaf)
        time.sleep(1.5)
    # The CA rolls: both CAs in every bundle first, then leaves of the new one, then the
    # old CA leaves the bundle.
    new_ca = create_ca(common_name="mesh CA 2")
    mesh.server_volume.pod_certificate(leaf(mesh.ca, spiffe("shop", "orders")), mesh.ca, new_ca)
    mesh.client_volume.pod_certificate(mesh.client_leaf, mesh.ca, new_ca)
    time.sleep(1.5)
    mesh.server_volume.pod_certificate(leaf(new_ca, spiffe("shop", "orders")), mesh.ca, new_ca)
    new_client = leaf(new_ca, spiffe("shop", "web"))
    mesh.client_volume.pod_certificate(new_client, mesh.ca, new_ca)
    time.sleep(1.5)
    mesh.server_volume.pod_certificate(leaf(new_ca, spiffe("shop", "orders")), new_ca)
    mesh.client_volume.pod_certificate(new_client, new_ca)
    out, _ = load.communicate(timeout=60)
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    assert int(re.search(r"(\d+) requests in", out)[1]) > 100, out
    assert mesh.server.envoy.pid == pid and mesh.server.envoy.poll() is None
    # New connections see the new CA's leaf; a peer of the old CA is refused now.
    assert mesh.peer(new_client, new_ca).startswith("HTTP/1.1 200")
    assert not mesh.peer(mesh.client_leaf, mesh.ca, new_ca).startswith("HTTP/1.1 200")
    mesh.ca, mesh.client_leaf = new_ca, new_client


def test_identity_is_reported(mesh: Mesh) -> None:
    status, body = mesh.readiness(mesh.server, "/identity")
    assert status == 200
    assert re.fullmatch(rf"{spiffe('shop', 'orders')} notAfter=\d{{4}}-\d\d-\d\dT[\d:]+Z", body)


@pytest.mark.parametrize("mode", ["permissive", "strict"])
def test_without_a_certificate_the_pod_says_so(mesh: Mesh, mode: str) -> None:
    """The feature gate off or no signer: the projected volume comes without the files."""
    spec = server_spec({"proxy.io/mtls": mode})
    root = mesh.server.identity_root
    saved = root.rename(root.with_name(root.name + "-saved"))
    try:
        ProjectedVolume(mesh.server.identity_root / "proxy-identity").write({})
        mesh.restart(mesh.server, spec)
        status, body = mesh.readiness(mesh.server, "/identity")
        assert status == 503
        assert "no identity: no certificate:" in body and "certificate-chain.pem is missing" in body
        ready = mesh.readiness(mesh.server, "/healthz/app")
        if mode == "strict":
            assert ready[0] == 503 and "strict: not ready" in ready[1]
            assert mesh.plaintext(f"http://{SERVER}:8080/")[0] == 0
        else:
            assert ready[0] == 200 and "permissive: serving plaintext only" in body
            assert mesh.plaintext(f"http://{SERVER}:8080/")[0] == 200
            # A meshed caller sees the mTLS endpoint fail and calls in plaintext.
            wait_for(
                lambda: (
                    "orders.shop:8080 plaintext"
                    in mesh.readiness(mesh.client, "/upstream-transport")[1]
                ),
                15,
                "the client falling back to plaintext",
            )
            assert mesh.call("http://orders.shop:8080/")[0] == 200
    finally:
        shutil.rmtree(mesh.server.identity_root)
        saved.rename(mesh.server.identity_root)
        mesh.restart(mesh.server, server_spec())
        wait_for(
            lambda: (
                "orders.shop:8080 mtls" in mesh.readiness(mesh.client, "/upstream-transport")[1]
            ),
            15,
            "the client back on mTLS",
        )


def test_csi_driver_spiffe_files_serve_the_same(mesh: Mesh) -> None:
    """identity csi-spiffe: tls.crt, tls.key and ca.crt, as cert-manager's driver writes
    them, in place of the credential bundle."""
    csi = from_mapping({"mtls": {"identity": "csi-spiffe"}})
    root = mesh.server.identity_root
    saved = root.rename(root.with_name(root.name + "-saved"))
    try:
        volume = ProjectedVolume(mesh.server.identity_root / "proxy-identity")
        volume.csi_spiffe(leaf(mesh.ca, spiffe("shop", "orders")), mesh.ca)
        mesh.restart(mesh.server, server_spec(mesh=csi))
        assert mesh.readiness(mesh.server, "/identity")[0] == 200
        wait_for(lambda: mesh.call("http://orders.shop:8080/")[0] == 200, 15, "a call")
        status, body = mesh.call("http://orders.shop:8080/xfcc")
        assert status == 200 and f"URI={spiffe('shop', 'web')}" in body
        renewed = leaf(mesh.ca, spiffe("shop", "orders"))
        volume.csi_spiffe(renewed, mesh.ca)
        wait_for(
            lambda: int(serial(mesh.server), 16) == renewed.cert.serial_number,
            10,
            "the renewed certificate served",
        )
    finally:
        shutil.rmtree(mesh.server.identity_root)
        saved.rename(mesh.server.identity_root)
        mesh.restart(mesh.server, server_spec())


APP = ("setpriv", "--reuid", "4242", "--regid", "4242", "--clear-groups")
"""A process of the app container: another UID than the proxy's, in the pod's namespace."""
WRITES = (
    "/logging?level=trace",
    "/quitquitquit",
    "/drain_listeners",
    "/runtime_modify?envoy.reloadable_features.x=false",
    "/healthcheck/fail",
    "/reset_counters",
    "/cpuprofiler?enable=y",
    "/drain",
)


def test_an_app_process_reaches_no_key_and_cannot_reconfigure_its_proxy(mesh: Mesh) -> None:
    server = mesh.server
    listed = set(re.findall(r"^  (/[\w/.-]*)(?: \(POST\))?:", server.admin("/help")[1], re.M))
    assert {"/config_dump", "/certs", "/logging", "/quitquitquit"} <= listed
    paths = [*sorted(listed), "/config_dump?resource=dynamic_active_secrets&include_eds"]
    for method in ("GET", "POST"):
        urls = [
            f"http://127.0.0.1:{port}{path}" for port in (15000, 15021, 15090) for path in paths
        ]
        for path in WRITES:
            urls += [f"http://127.0.0.1:{port}{path}" for port in (15021, 15090)]
        curl = ["curl", "-s", "-X", method, "--max-time", "2", "-w", "\n@%{http_code} %{url}\n"]
        answers = mesh.net.run(mesh.net.pod, *APP, *curl, *urls, timeout=120).stdout
        assert "PRIVATE KEY" not in answers
        codes = dict((url, code) for code, url in re.findall(r"^@(\d{3}) (\S+)$", answers, re.M))
        assert set(codes) == set(urls)
        assert {codes[u] for u in urls if ":15000/" in u} == {"000"}  # nothing listens there
        for path in WRITES:
            assert codes[f"http://127.0.0.1:15021{path}"] in ("403", "404"), path
            assert codes[f"http://127.0.0.1:15090{path}"] == "404", path
    # The admin API is a socket only the proxy's UID may open.
    refused = mesh.net.run(
        mesh.net.pod,
        *APP,
        "curl",
        "-s",
        "--unix-socket",
        str(server.admin_socket),
        "http://a/ready",
    )
    assert refused.returncode != 0 and "LIVE" not in refused.stdout
    # Nothing was changed: same Envoy, ready, not draining, log levels as they were.
    assert server.envoy.poll() is None and server.admin("/ready") == (200, "LIVE\n")
    assert ": trace" not in server.admin("/logging", "POST")[1]
    assert server.stat("listener_manager.total_listeners_draining") == 0
    assert mesh.call("http://orders.shop:8080/")[0] == 200
    # Every file the app's UID can open in its volume (/dev/shm) and in the proxy's /proc.
    walk = (
        'n=0; for f in $(find "$1" "/proc/$2" -maxdepth 3 -type f -readable 2>/dev/null); do '
        'timeout 1 cat "$f" 2>/dev/null; n=$((n + 1)); done; echo "files=$n"'
    )
    seen = mesh.net.run(
        mesh.net.pod, *APP, "bash", "-c", walk, "walk", str(server.folder), str(server.envoy.pid)
    ).stdout
    assert int(re.search(r"files=(\d+)", seen)[1]) >= 10
    assert "PRIVATE KEY" not in seen
    # The key is there, for the proxy: this walk would have found it in the proxy's volume.
    as_root = mesh.net.run(mesh.net.pod, "bash", "-c", walk, "walk", str(server.identity_root), "0")
    assert "PRIVATE KEY" in as_root.stdout


@pytest.mark.parametrize("mode", ["off", "permissive", "strict"])
def test_undeclared_ports_keep_loopback_private_and_follow_the_pods_mode(
    mesh: Mesh, mode: str, tmp_path
) -> None:
    """A port the pod does not declare: passed through to the address it was sent to, so
    a service bound to 127.0.0.1 stays out of reach; strict refuses plaintext there too,
    and mTLS reaches it with the same checks as a declared TCP port."""
    if not (mesh.root / "site-every-address").exists():
        mesh.net.serve_http(mesh.net.pod, "0.0.0.0", 7072, mesh.root, "every-address")
        mesh.net.serve_http(mesh.net.pod, "127.0.0.1", 7071, mesh.root, "loopback-only")
    mesh.restart(mesh.server, server_spec({"proxy.io/mtls": mode}))
    try:
        plaintext = mesh.plaintext(f"http://{SERVER}:7072/who.txt")
        assert plaintext == ((0, "") if mode == "strict" else (200, "every-address"))
        assert mesh.plaintext(f"http://{SERVER}:7071/who.txt")[0] == 0
        if mode == "off":
            return
        assert mesh.peer(mesh.client_leaf, port=7072, path="/who.txt").startswith("HTTP/1.0 200")
        assert not mesh.peer(mesh.client_leaf, port=7071, path="/who.txt").startswith("HTTP")
        assert mesh.server.stat("tcp.inbound_passthrough_mtls.downstream_cx_total") >= 2
        other = mesh.readiness(mesh.server, "/mtls")[1].splitlines()[-1]
        policy = "strict" if mode == "strict" else "permissive"
        assert re.fullmatch(rf"other {policy} mtls=[1-9]\d* plaintext=\d+ denied=0", other)
    finally:
        mesh.restart(mesh.server, server_spec())


def test_allow_from_holds_on_undeclared_ports_too(mesh: Mesh) -> None:
    if not (mesh.root / "site-every-address").exists():
        mesh.net.serve_http(mesh.net.pod, "0.0.0.0", 7072, mesh.root, "every-address")
    mesh.restart(mesh.server, server_spec({"proxy.io/allow-from": "ns/shop/sa/web"}))
    try:
        assert mesh.plaintext(f"http://{SERVER}:7072/who.txt")[0] == 0
        allowed = mesh.peer(leaf(mesh.ca, spiffe("shop", "web")), port=7072, path="/who.txt")
        assert allowed.startswith("HTTP/1.0 200")
        intruder = leaf(mesh.ca, spiffe("shop", "intruder"))
        assert not mesh.peer(intruder, port=7072, path="/who.txt").startswith("HTTP")
        assert mesh.server.stat("tcp.inbound_passthrough_mtls.rbac.denied") == 1
    finally:
        mesh.restart(mesh.server, server_spec())


def test_a_certificate_with_more_than_one_identity_is_refused(mesh: Mesh) -> None:
    """SPIFFE: exactly one URI SAN. Two, or the allowed ID as a DNS SAN, get nowhere;
    the caller's identity is only ever read from its URI SAN."""
    web, intruder = spiffe("shop", "web"), spiffe("shop", "intruder")
    two = forged(mesh.ca, (intruder, web))
    as_dns = forged(mesh.ca, (intruder,), dns=(web,))
    assert mesh.peer(forged(mesh.ca, (web,))).startswith("HTTP/1.1 200")  # the control
    before = mesh.server.stat("http.inbound_8080_mtls.rbac.denied")
    assert not mesh.peer(two).startswith("HTTP/1.1 200")  # any identity of the mesh, but one
    assert mesh.server.stat("http.inbound_8080_mtls.rbac.denied") == before + 1
    mesh.restart(mesh.server, server_spec({"proxy.io/allow-from": "ns/shop/sa/web"}))
    try:
        for pair in (two, as_dns, forged(mesh.ca, (web, web))):
            assert mesh.peer(pair).startswith("HTTP/1.1 403")
            assert not mesh.peer(pair, port=9000).startswith("HTTP/1.1 200")
        assert mesh.peer(forged(mesh.ca, (web,))).startswith("HTTP/1.1 200")
    finally:
        mesh.restart(mesh.server, server_spec())


def test_an_expired_certificate_cannot_resume_its_session(mesh: Mesh) -> None:
    """No TLS session resumption on the mTLS listeners: a resumed session would skip the
    certificate check, so a client whose certificate expired could go on calling."""
    short = forged(mesh.ca, (spiffe("shop", "web"),), seconds=3)
    first, _, second = mesh.peer(short, resume_after=4.5).partition("\n\n")
    assert first.startswith("HTTP/1.1 200") and "resumed=False" in first
    assert not second.strip().startswith("HTTP/1.1 200"), second
    assert "resumed=True" not in second
