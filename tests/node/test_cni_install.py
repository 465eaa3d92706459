"""How the agent puts the plugin on the node, on temporary folders standing in for
/etc/cni/net.d and /opt/cni/bin: inserted last in the active conflist and only once, a
``.conf`` made a conflist, never into a version it cannot serve, what an earlier instance
left cleared, and itself taken away on stop."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from webhook.node import install, plugin

FLANNEL = {
    "name": "cbr0",
    "cniVersion": "1.0.0",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


@pytest.fixture
def node(tmp_path) -> install.Installation:
    bin_dir, conf_dir = tmp_path / "opt-cni-bin", tmp_path / "etc-cni-net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (conf_dir / "10-flannel.conflist").write_text(json.dumps(FLANNEL))
    (conf_dir / "99-loopback.conf").write_text('{"cniVersion": "1.0.0", "type": "loopback"}')
    relay = tmp_path / "image-relay"
    relay.write_bytes(b"\x7fELF relay")
    return install.Installation(
        bin_dir,
        conf_dir,
        relay,
        Path("/var/run/proxy-injector/cni.sock"),
        Path("/var/log/proxy-injector-cni.log"),
        10.0,
    )


def plugin_types(node: install.Installation, name: str = "10-flannel.conflist") -> list[str]:
    return [p["type"] for p in json.loads((node.conf_dir / name).read_text())["plugins"]]


def test_inserted_last_in_the_active_conflist_and_only_once(node) -> None:
    assert install.insert(node)[0] is install.State.CHANGED
    assert plugin_types(node) == ["flannel", "portmap", "proxy-injector"]
    ours = json.loads((node.conf_dir / "10-flannel.conflist").read_text())["plugins"][-1]
    assert ours == {
        "type": "proxy-injector",
        "agentSocket": "/var/run/proxy-injector/cni.sock",
        "logFile": "/var/log/proxy-injector-cni.log",
        "timeoutSeconds": 10.0,
    }
    before = (node.conf_dir / "10-flannel.conflist").read_bytes()
    assert install.insert(node)[0] is install.State.INSTALLED
    assert (node.conf_dir / "10-flannel.conflist").read_bytes() == before
    assert (node.conf_dir / "99-loopback.conf").exists()  # only the active file changes


def test_keys_an_operator_added_to_our_entry_are_kept(node) -> None:
    path = node.conf_dir / "10-flannel.conflist"
    install.insert(node)
    conflist = json.loads(path.read_text())
    conflist["plugins"][-1] |= {"args": {"cni": {"K8S_POD_NAMESPACE": "shop"}}, "logFile": "x"}
    path.write_text(json.dumps(conflist))
    assert install.insert(node)[0] is install.State.CHANGED  # logFile is ours: rewritten
    ours = json.loads(path.read_text())["plugins"][-1]
    assert ours["args"] == {"cni": {"K8S_POD_NAMESPACE": "shop"}}
    assert ours["logFile"] == "/var/log/proxy-injector-cni.log"


def test_a_single_plugin_conf_becomes_a_conflist(node) -> None:
    (node.conf_dir / "10-flannel.conflist").unlink()
    (node.conf_dir / "05-bridge.conf").write_text(
        '{"cniVersion": "0.4.0", "name": "k8s", "type": "bridge", "bridge": "cni0"}'
    )
    install.insert(node)
    assert not (node.conf_dir / "05-bridge.conf").exists()
    conflist = json.loads((node.conf_dir / "05-bridge.conflist").read_text())
    assert conflist["cniVersion"] == "0.4.0" and conflist["name"] == "k8s"
    assert plugin_types(node, "05-bridge.conflist") == ["bridge", "proxy-injector"]


@pytest.mark.parametrize("version", plugin.SUPPORTED_VERSIONS)
def test_every_version_it_serves_is_inserted_into(node, version) -> None:
    (node.conf_dir / "10-flannel.conflist").write_text(
        json.dumps({**FLANNEL, "cniVersion": version})
    )
    install.insert(node)
    assert plugin_types(node)[-1] == "proxy-injector"


@pytest.mark.parametrize(
    ("versions", "named"),
    [
        ({"cniVersion": "0.2.0"}, "0.2.0"),
        ({"cniVersion": "1.1.0", "cniVersions": ["1.1.0", "1.2.0"]}, "1.2.0"),
        ({"cniVersion": None}, "(none given)"),
    ],
)
def test_a_version_it_cannot_serve_is_refused_and_the_file_left_alone(
    node, versions, named
) -> None:
    path = node.conf_dir / "10-flannel.conflist"
    path.write_text(json.dumps({**FLANNEL, **versions}))
    before = path.read_bytes()
    with pytest.raises(install.InstallError, match=re.escape(f"not inserted: cniVersion {named}")):
        install.insert(node)
    assert path.read_bytes() == before


def test_no_cni_config_yet_is_said(node) -> None:
    for path in node.conf_dir.iterdir():
        path.unlink()
    with pytest.raises(install.InstallError, match=r"no CNI config in .* yet"):
        install.insert(node)


def test_an_earlier_instances_leftovers_are_cleared_and_the_relay_copied(node) -> None:
    shim = node.plugin
    shim.write_text("#!/bin/sh\nexec nsenter --target 4242 --mount -- proxy-injector cni\n")
    (node.conf_dir / "proxy-injector-kubeconfig").write_text("{}")
    (node.conf_dir / ".10-flannel.conflist.proxy-injector.tmp").write_text("{")
    (node.conf_dir / ".10-calico.conflist.tmp").write_text("{")  # another agent's: kept
    removed = install.clean_previous(node)
    assert sorted(Path(p).name for p in removed) == [
        ".10-flannel.conflist.proxy-injector.tmp",
        "proxy-injector",
        "proxy-injector-kubeconfig",
    ]
    assert (node.conf_dir / ".10-calico.conflist.tmp").exists()
    assert install.copy_relay(node) is True
    assert shim.read_bytes() == b"\x7fELF relay" and shim.stat().st_mode & 0o777 == 0o755
    assert install.copy_relay(node) is False  # unchanged: not rewritten


def test_removed_from_the_conflist_and_the_relay_taken_away(node) -> None:
    install.copy_relay(node)
    install.insert(node)
    install.remove(node)
    assert plugin_types(node) == ["flannel", "portmap"]
    assert not node.plugin.exists()


def test_the_agent_refuses_to_lock_a_shared_socket_directory(tmp_path) -> None:
    import asyncio

    from webhook.node.agent import Agent, Settings
    from webhook.node.metrics import AgentMetrics

    shared = tmp_path / "run"
    shared.mkdir(mode=0o755)
    (shared / "containerd.sock").write_text("")
    agent = Agent(Settings(frozenset(), 10.0, "nft"), None, None, AgentMetrics())
    with pytest.raises(ValueError, match="give the socket a directory of its own"):
        asyncio.run(agent.serve(shared / "cni.sock"))
    assert shared.stat().st_mode & 0o777 == 0o755

    async def served() -> int:
        server = await agent.serve(tmp_path / "proxy-injector" / "cni.sock")
        server.close()
        return (tmp_path / "proxy-injector").stat().st_mode & 0o777

    assert asyncio.run(served()) == 0o700
