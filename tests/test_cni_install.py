"""``proxy-injector cni install`` on temporary folders standing in for /etc/cni/net.d and
/opt/cni/bin: inserted last in the active conflist, idempotent, put back when the network
plugin rewrites the file, and gone on stop; the shim it leaves runs the plugin for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.processes import needs_root, wait_for
from webhook import cni, cni_install

FLANNEL = {
    "name": "cbr0",
    "cniVersion": "1.0.0",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


@pytest.fixture
def node(tmp_path):
    bin_dir, conf_dir = tmp_path / "opt-cni-bin", tmp_path / "etc-cni-net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (conf_dir / "10-flannel.conflist").write_text(json.dumps(FLANNEL))
    (conf_dir / "99-loopback.conf").write_text('{"cniVersion": "1.0.0", "type": "loopback"}')
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    return cni_install.Installation(
        bin_dir, conf_dir, os.getpid(), "https://10.96.0.1:443", token, None, "nft"
    )


def plugin_types(install: cni_install.Installation) -> list[str]:
    conflist = json.loads((install.conf_dir / "10-flannel.conflist").read_text())
    return [p["type"] for p in conflist["plugins"]]


def test_inserted_last_in_the_active_conflist_and_only_once(node) -> None:
    assert cni_install.insert(node) is True
    assert plugin_types(node) == ["flannel", "portmap", "proxy-injector"]
    ours = json.loads((node.conf_dir / "10-flannel.conflist").read_text())["plugins"][-1]
    assert ours == {
        "type": "proxy-injector",
        "kubeconfig": str(node.conf_dir / "proxy-injector-kubeconfig"),
        "iptablesBackend": "nft",
    }
    before = (node.conf_dir / "10-flannel.conflist").read_bytes()
    assert cni_install.insert(node) is False
    assert (node.conf_dir / "10-flannel.conflist").read_bytes() == before
    assert (node.conf_dir / "99-loopback.conf").exists()  # only the active file changes


def test_a_single_plugin_conf_becomes_a_conflist(tmp_path, node) -> None:
    (node.conf_dir / "10-flannel.conflist").unlink()
    (node.conf_dir / "05-bridge.conf").write_text(
        '{"cniVersion": "0.4.0", "name": "k8s", "type": "bridge", "bridge": "cni0"}'
    )
    cni_install.insert(node)
    assert not (node.conf_dir / "05-bridge.conf").exists()
    conflist = json.loads((node.conf_dir / "05-bridge.conflist").read_text())
    assert conflist["cniVersion"] == "0.4.0" and conflist["name"] == "k8s"
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "proxy-injector"]


def test_kept_last_when_the_network_plugin_rewrites_the_file_and_removed_on_stop(node) -> None:
    stop, lines = threading.Event(), []
    running = threading.Thread(target=cni_install.run, args=(node, 0.05, stop, lines.append))
    running.start()
    try:
        wait_for(lambda: plugin_types(node)[-1:] == ["proxy-injector"], 10, "inserted")
        assert (node.bin_dir / "proxy-injector").stat().st_mode & 0o777 == 0o755
        (node.conf_dir / "10-flannel.conflist").write_text(json.dumps(FLANNEL))  # rewritten
        wait_for(lambda: plugin_types(node)[-1:] == ["proxy-injector"], 10, "put back")
    finally:
        stop.set()
        running.join(timeout=10)
    assert plugin_types(node) == ["flannel", "portmap"]
    assert sorted(p.name for p in node.bin_dir.iterdir()) == []
    assert not (node.conf_dir / "proxy-injector-kubeconfig").exists()
    assert lines[-1] == "proxy-injector removed from the node's CNI config"


def test_no_cni_config_yet_is_said_and_retried(tmp_path, node) -> None:
    for path in node.conf_dir.iterdir():
        path.unlink()
    with pytest.raises(cni_install.InstallError, match=r"no CNI config in .* yet"):
        cni_install.insert(node)


def test_the_kubeconfig_gives_the_plugin_the_service_accounts_token(node) -> None:
    cni_install.write_kubeconfig(node)
    assert (node.kubeconfig.stat().st_mode & 0o777) == 0o600
    server, _, headers = cni._api(str(node.kubeconfig))
    assert server == "https://10.96.0.1:443"
    assert headers["Authorization"] == "Bearer sa-token"


@needs_root
def test_the_shim_runs_the_plugin_in_the_installers_mount_namespace(node) -> None:
    cni_install.write_shim(node)
    venv_bin = str(Path(sys.executable).parent)
    done = subprocess.run(
        [str(node.shim)],
        env={"CNI_COMMAND": "VERSION", "PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["supportedVersions"][-1] == "1.0.0"


def test_the_plugin_reads_the_names_the_engine_writes() -> None:
    """The plugin repeats them so that it starts without the engine; they must agree."""
    from webhook.engine import names

    assert (cni.INTERCEPTION_KEY, cni.INTERCEPTION_SPEC_VERSION, cni.STATUS_KEY) == (
        names.INTERCEPTION_KEY,
        names.INTERCEPTION_SPEC_VERSION,
        names.STATUS_KEY,
    )
    newer = {
        "metadata": {
            "annotations": {
                names.STATUS_KEY: "{}",
                names.INTERCEPTION_KEY: '{"version": 2, "initIptables": []}',
            }
        }
    }
    with pytest.raises(cni.CniError, match="version 2 is not one this plugin applies"):
        cni.wanted_flags(newer)
