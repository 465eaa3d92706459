"""The iptables rules init-iptables renders, and how it fails: loudly, never half-applied."""

from __future__ import annotations

import subprocess

import pytest

from tests import netns
from tests.support import proxy_injector
from webhook.node import iptables
from webhook.node.interception import Interception, render


def spec(**flags: str) -> Interception:
    defaults = {
        "include_inbound_ports": "*",
        "exclude_inbound_ports": "",
        "exclude_outbound_ports": "",
        "include_outbound_ip_ranges": "*",
        "exclude_outbound_ip_ranges": "",
    }
    return Interception.parse(
        proxy_uid=1337,
        proxy_gid=1337,
        inbound_capture_port=15006,
        outbound_capture_port=15001,
        **{**defaults, **flags},
    )


def rules(document: str) -> list[str]:
    return [line for line in document.splitlines() if line.startswith("-A")]


def test_default_rules_redirect_everything_but_the_proxys_own() -> None:
    v4 = rules(render(spec(), 4))
    assert "-A PROXY_INBOUND -p tcp -j PROXY_IN_REDIRECT" in v4
    for port in (15000, 15001, 15006, 15021, 15090):
        assert f"-A PROXY_INBOUND -p tcp --dport {port} -j RETURN" in v4
    assert v4.index("-A PROXY_OUTPUT -m owner --uid-owner 1337 -j RETURN") < v4.index(
        "-A PROXY_OUTPUT -p tcp -j PROXY_REDIRECT"
    )
    assert "-A PROXY_OUTPUT -m owner --gid-owner 1337 -j RETURN" in v4
    assert "-A PROXY_OUTPUT -d 127.0.0.0/8 -j RETURN" in v4
    assert "-A PREROUTING -p tcp -j PROXY_INBOUND" in v4
    assert "-A OUTPUT -p tcp -j PROXY_OUTPUT" in v4


def test_include_inbound_list_redirects_only_those_ports() -> None:
    v4 = rules(
        render(spec(include_inbound_ports="8080,9090,15021", exclude_inbound_ports="9090"), 4)
    )
    inbound = [r for r in v4 if r.startswith("-A PROXY_INBOUND")]
    assert inbound == ["-A PROXY_INBOUND -p tcp --dport 8080 -j PROXY_IN_REDIRECT"]


def test_ranges_go_to_the_family_they_belong_to() -> None:
    flags = {
        "exclude_outbound_ip_ranges": "169.254.169.254/32,fd00::/8",
        "include_outbound_ip_ranges": "10.0.0.0/8,2001:db8::/32",
        "exclude_outbound_ports": "5432",
    }
    v4, v6 = rules(render(spec(**flags), 4)), rules(render(spec(**flags), 6))
    assert "-A PROXY_OUTPUT -d 169.254.169.254/32 -j RETURN" in v4
    assert "-A PROXY_OUTPUT -d 10.0.0.0/8 -p tcp -j PROXY_REDIRECT" in v4
    assert not any("fd00::" in r or "2001:db8" in r for r in v4)
    assert "-A PROXY_OUTPUT -d fd00::/8 -j RETURN" in v6
    assert "-A PROXY_OUTPUT -d 2001:db8::/32 -p tcp -j PROXY_REDIRECT" in v6
    assert "-A PROXY_OUTPUT -d ::1/128 -j RETURN" in v6
    assert "-A PROXY_OUTPUT -p tcp --dport 5432 -j RETURN" in v6
    assert "-A PROXY_OUTPUT -p tcp -j PROXY_REDIRECT" not in v4 + v6


def test_a_rerun_keeps_its_chains_but_adds_no_second_jump() -> None:
    again = render(
        spec(), 4, ["-A PREROUTING -p tcp -j PROXY_INBOUND", "-A OUTPUT -p tcp -j PROXY_OUTPUT"]
    )
    assert ":PROXY_INBOUND - [0:0]" in again
    assert "-A PREROUTING" not in again and "-A OUTPUT " not in again


def test_bad_flags_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--exclude-outbound-ip-ranges 'nope'"):
        spec(exclude_outbound_ip_ranges="nope")


def test_ipv6_ranges_on_a_kernel_without_ipv6_are_an_error(monkeypatch) -> None:
    monkeypatch.setattr(iptables, "ipv6_available", lambda: False)
    with pytest.raises(iptables.InterceptionError, match="IPv6 disabled"):
        iptables.families(spec(exclude_outbound_ip_ranges="fd00::/8"))
    assert iptables.families(spec()) == [4]


def fake_saves(outputs: dict[str, str]):
    def run(command, stdin=None):
        return subprocess.CompletedProcess(command, 0, outputs.get(command[0], ""), "")

    return run


def test_backend_detection_follows_the_rules_already_there(monkeypatch) -> None:
    monkeypatch.setattr(iptables.shutil, "which", lambda name: f"/usr/sbin/{name}")
    legacy = fake_saves({"iptables-legacy-save": "*nat\n-A KUBE-X -j RETURN\nCOMMIT\n"})
    assert iptables.detect_backend(legacy) == "legacy"
    nft = fake_saves(
        {
            "iptables-nft-save": "*nat\n-A KUBE-X -j RETURN\nCOMMIT\n",
            "iptables": "iptables v1.8.9 (legacy)",
        }
    )
    assert iptables.detect_backend(nft) == "nft"
    empty = fake_saves({"iptables": "iptables v1.8.9 (nf_tables)"})
    assert iptables.detect_backend(empty) == "nft"


def test_a_kernel_without_the_nat_table_fails_with_a_reason() -> None:
    def run(command, stdin=None):
        return subprocess.CompletedProcess(
            command,
            1,
            "",
            "iptables-restore: unable to initialize table 'nat'\n"
            "Error occurred at line: 1\nTry `iptables-restore -h' for more information.\n"
            "can't initialize iptables table `nat': Table does not exist",
        )

    with pytest.raises(iptables.InterceptionError, match="no nat table"):
        iptables.apply({4: render(spec(), 4)}, "nft", run)


def init_iptables(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return proxy_injector("init-iptables", *args, env=env, prefix=prefix)


def test_dry_run_prints_the_rules_and_applies_nothing() -> None:
    result = init_iptables("--dry-run", "--exclude-inbound-ports", "9090")
    assert result.returncode == 0
    assert result.stdout.startswith("# IPv4\n*nat\n")
    assert "-A PROXY_INBOUND -p tcp --dport 9090 -j RETURN" in result.stdout


def test_no_iptables_installed_is_a_failure_not_a_bypass(tmp_path) -> None:
    result = init_iptables(env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "no iptables found" in result.stderr


@pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_without_net_admin_the_init_container_fails(backend) -> None:
    net = netns.Network()
    try:
        net.create()
        result = init_iptables(
            "--iptables-backend",
            backend,
            prefix=(
                *net.exec(net.pod),
                "setpriv",
                "--bounding-set=-net_admin,-net_raw",
                "--inh-caps=-net_admin,-net_raw",
            ),
        )
        assert result.returncode == 1
        assert "needs NET_ADMIN and NET_RAW" in result.stderr
    finally:
        net.destroy()
