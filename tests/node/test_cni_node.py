"""The CNI plugin on a simulated node (tests/cni_node.py), killed and rebooted the way nodes
are: the static relay in the node's bin dir, the agent as the DaemonSet runs it, Debian's
``bridge`` and ``host-local`` first in the chain, the runtime with systemd's PATH and nothing
of the venv. Pods that are not ours always get their network; meshed pods never run unmeshed
for long; nothing depends on a PID or on PATH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import netns
from tests.cni_node import SimulatedNode, agent_answers, pod_spec, relay_binary, validate_failed
from tests.processes import wait_for
from webhook.node import plugin
from webhook.node.wire import encode_request

why_not = netns.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))


@pytest.fixture
def node(tmp_path):
    for tool in ("iptables-nft-restore", "/usr/lib/cni/bridge", "musl-gcc"):
        if not (Path(tool).exists() or subprocess.run(["which", tool], capture_output=True).stdout):
            pytest.fail(f"{tool} is missing (scripts/test installs it)")
    simulated = SimulatedNode(tmp_path)
    simulated.write_conflist()
    try:
        yield simulated
    finally:
        simulated.destroy()


def addresses(result: dict) -> list[str]:
    return [ip["address"] for ip in result.get("ips", [])]


def test_a_killed_agent_fails_open_and_the_repair_loop_recreates_the_meshed_pod(node) -> None:
    node.start_agent()
    node.wait_ready()
    node.kill_agent(signal.SIGKILL)  # OOM, or kill -9: no cleanup ran
    assert node.conflist()["plugins"][-1]["type"] == "proxy-injector"

    # Pods that are not ours get their network as if the plugin were not there.
    for namespace, name in (("kube-system", "coredns-7db6d8ff4d-x2x9k"), ("shop", "legacy-0")):
        pod = node.api.put_pod(pod_spec(namespace, name, meshed=False))
        code, result = node.add(node.sandbox(namespace, name, pod["metadata"]["uid"]))
        assert code == 0, result
        assert addresses(result), result
    lines = node.log_file.read_text().splitlines()
    assert len(lines) == 2
    assert "pod=kube-system/coredns-7db6d8ff4d-x2x9k" in lines[0]
    assert "not reached (Connection refused): passed through without interception" in lines[0]

    # A meshed pod started meanwhile has no rules, and its proxy-validate says so.
    web = node.api.put_pod(pod_spec("shop", "web-0", meshed=True))
    box = node.sandbox("shop", "web-0", web["metadata"]["uid"])
    code, result = node.add(box)
    assert code == 0 and addresses(result)
    assert "PROXY" not in node.nat(box)
    checked = node.validate(box, web)
    assert checked.returncode == 95, checked.stderr
    node.api.put_pod(validate_failed(web, 95))

    # The agent is back: the pod is deleted (its controller makes it again), with an Event.
    node.start_agent()
    node.wait_ready()
    wait_for(lambda: ("shop", "web-0") in node.api.deleted, 20, "the repair loop's delete")
    (event,) = node.api.events
    assert event["reason"] == "InterceptionMissing" and event["type"] == "Warning"
    assert event["involvedObject"]["uid"] == web["metadata"]["uid"]
    assert "proxy-validate exited 95" in event["message"]
    assert 'proxy_injector_cni_repairs_total{action="deleted"} 1.0' in node.http("/metrics")[1]

    # Its replacement is meshed, and proxy-validate passes.
    again = node.api.put_pod(pod_spec("shop", "web-0", meshed=True))
    box = node.sandbox("shop", "web-0", again["metadata"]["uid"])
    code, result = node.add(box)
    assert code == 0 and addresses(result)
    assert "-A OUTPUT -p tcp -j PROXY_OUTPUT" in node.nat(box)
    checked = node.validate(box, again)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("redirected: 192.0.2.1 port 80 reached port 15001")


def test_a_bare_pod_is_only_labelled_since_nothing_would_recreate_it(node) -> None:
    bare = node.api.put_pod(pod_spec("shop", "debug", meshed=True, owned=False))
    node.api.put_pod(validate_failed(bare, 95))
    other = node.api.put_pod(pod_spec("shop", "crashing", meshed=True))
    node.api.put_pod(validate_failed(other, 1))  # failed for another reason: not ours to fix
    node.start_agent()
    node.wait_ready()
    wait_for(lambda: node.api.events, 20, "the repair loop's Event")
    labelled = next(p for p in node.api.pods["shop"] if p["metadata"]["name"] == "debug")
    assert labelled["metadata"]["labels"] == {"proxy.io/interception-missing": "true"}
    assert "delete it yourself" in node.api.events[0]["message"]
    assert node.api.deleted == []


def set_last_pid(pid: int) -> None:
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))


def test_after_a_reboot_nothing_of_a_process_on_the_old_pid_runs(node, tmp_path) -> None:
    node.start_agent()
    node.wait_ready()
    old_pid = node.kill_agent(signal.SIGKILL)
    # Another process now has the agent's PID, in a mount namespace of its own where a
    # `proxy-injector` of its own is first on systemd's PATH.
    marker = tmp_path / "impostor-ran"
    impostor_bin = tmp_path / "impostor-bin"
    impostor_bin.mkdir()
    (impostor_bin / "proxy-injector").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (impostor_bin / "proxy-injector").chmod(0o755)
    script = f"mount --bind {impostor_bin} /usr/local/bin && exec sleep 60"
    impostor = None
    for _ in range(20):
        set_last_pid(old_pid)
        started = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                    script])  # fmt: skip
        if started.pid == old_pid:
            impostor = started
            break
        started.kill()
        started.wait(timeout=10)
    assert impostor is not None, "could not start a process on the agent's old PID"
    try:
        wait_for(lambda: "sleep" in Path(f"/proc/{old_pid}/cmdline").read_text(), 10, "impostor")
        web = node.api.put_pod(pod_spec("shop", "web-0", meshed=True))
        box = node.sandbox("shop", "web-0", web["metadata"]["uid"])
        code, result = node.add(box)
        assert code == 0 and addresses(result), result
        for command in ("CHECK", "DEL"):
            done = node.ours(command, box, result)
            assert (done.returncode, done.stdout) == (0, b"")
    finally:
        impostor.kill()
        impostor.wait(timeout=10)
    assert not marker.exists()
    assert len(node.log_file.read_text().splitlines()) == 3


def test_a_trickling_api_fails_add_within_the_deadline_with_code_11(node) -> None:
    node.start_agent()
    node.wait_ready()
    # Not in the agent's cache (no watch event): ADD must read it, one byte every 4 s.
    node.api.pods["shop"] = [pod_spec("shop", "web-0", meshed=True)]
    node.api.trickle = 4.0
    box = node.sandbox("shop", "web-0")
    started = time.monotonic()
    done = node.ours("ADD", box, {"cniVersion": "1.0.0", "ips": []})
    took = time.monotonic() - started
    error = json.loads(done.stdout)
    assert done.returncode == 1 and error["code"] == 11, error
    assert error["msg"] == "ADD of pod shop/web-0 did not finish within 10s"
    assert 10 <= took < 11.5
    assert "PROXY" not in node.nat(box)


def test_a_1_1_0_conflist_gets_every_command_answered_and_the_taint_goes(node) -> None:
    node.write_conflist("1.1.0", cniVersions=["1.0.0", "1.1.0"])
    node.api.nodes["node-1"]["spec"]["taints"] = [
        {"key": "proxy.io/cni-not-ready", "effect": "NoSchedule"},
        {"key": "example.com/gpu", "effect": "NoSchedule"},
    ]
    node.start_agent()
    node.wait_ready()
    assert [p["type"] for p in node.conflist()["plugins"]] == ["bridge", "proxy-injector"]
    wait_for(lambda: len(node.api.nodes["node-1"]["spec"]["taints"]) == 1, 10, "untainted")
    web = node.api.put_pod(pod_spec("shop", "web-0", meshed=True))
    box = node.sandbox("shop", "web-0", web["metadata"]["uid"])
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mtu": 1500}], "ips": []}
    added = node.ours("ADD", box, prev, version="1.1.0")
    assert (added.returncode, json.loads(added.stdout)) == (0, prev)
    assert ":PROXY_OUTPUT" in node.nat(box)
    assert node.ours("CHECK", box, prev, version="1.1.0").returncode == 0
    subprocess.run(
        ["ip", "netns", "exec", box.netns, "iptables-nft", "-t", "nat", "-F", "OUTPUT"],
        check=True,
        timeout=30,
    )  # fmt: skip  (someone flushed the jump)
    missing = node.ours("CHECK", box, prev, version="1.1.0")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["code"] == plugin.RULES_MISSING
    attachments = [{"containerID": box.container_id, "ifname": "eth0"}]
    for command, extra in (("STATUS", {}), ("GC", {"cni.dev/valid-attachments": attachments})):
        done = node.ours(command, None, version="1.1.0", **extra)
        assert (done.returncode, done.stdout) == (0, b""), done.stdout
    assert node.ours("DEL", box, prev, version="1.1.0").returncode == 0
    # STATUS at an older version is refused as skel refuses it.
    older = node.ours("STATUS", None, version="1.0.0")
    assert json.loads(older.stdout)["msg"] == "cniVersion 1.0.0 does not allow STATUS (1.1.0 does)"


@pytest.mark.parametrize(
    "extra", [{"cniVersion": "2.0.0"}, {"cniVersion": "1.1.0", "cniVersions": ["1.1.0", "1.2.0"]}]
)
def test_a_conflist_of_a_version_it_cannot_serve_is_not_touched(node, extra) -> None:
    path = node.conf_dir / "10-meshnet.conflist"
    path.write_text(json.dumps({"name": "meshnet", **extra, "plugins": [node.bridge()]}))
    before = path.read_bytes()
    node.start_agent()
    wait_for(lambda: node.http("/readyz")[0] == 503, 20, "the agent's answer")
    time.sleep(1)  # several install rounds
    assert path.read_bytes() == before
    code, reasons = node.http("/readyz")
    assert code == 503
    assert "not inserted: cniVersion" in reasons and "is not one the plugin serves" in reasons
    assert "not inserted: cniVersion" in node.agent_log()


MALFORMED = [
    ("args not an object", "ADD", {"args": "x"}, 7, "args is not a JSON object"),
    ("args.cni not an object", "ADD", {"args": {"cni": "x"}}, 7, "args.cni is not a JSON object"),
    ("prevResult a string", "ADD", {"prevResult": "x"}, 7, "prevResult is not a JSON object"),
    ("no cniVersion", "ADD", {"cniVersion": None}, 1, "cniVersion"),
    ("an unknown version", "ADD", {"cniVersion": "9.9.9"}, 1, "cniVersion"),
]


@pytest.mark.parametrize("through", ["relay", "agent socket"])
def test_malformed_input_gets_a_cni_error_each(node, through) -> None:
    node.start_agent()
    node.wait_ready()
    box = node.sandbox("shop", "web-0")
    ours = {"cniVersion": "1.0.0", "name": "meshnet", "type": "proxy-injector",
            "agentSocket": str(node.socket), "logFile": str(node.log_file)}  # fmt: skip
    head = json.dumps(ours)[:-1]
    cases = [
        (name, command, json.dumps({k: v for k, v in {**ours, **extra}.items() if v is not None}),
         code, msg)
        for name, command, extra, code, msg in MALFORMED
    ]  # fmt: skip
    cases += [
        ("10k-deep prevResult", "ADD", f'{head}, "prevResult": {"[" * 10_000}{"]" * 10_000}}}',
         6, "nest"),
        ("DEL with invalid JSON", "DEL", f"{head},", 6, "not valid JSON"),
        ("a JSON list", "ADD", "[]", 6, "not a JSON object"),
        ("not UTF-8", "ADD", f'{head}, "x": "\xff"}}'.encode("latin-1"), 6, ""),
        ("an unknown command", "FROB", json.dumps(ours), 4, "CNI_COMMAND"),
    ]  # fmt: skip
    for name, command, stdin, code, msg in cases:
        data = stdin if isinstance(stdin, bytes) else stdin.encode()
        if through == "relay":
            done = node.exec_plugin("proxy-injector", command, box, data)
            exit_code, printed = done.returncode, done.stdout
        else:
            environ = node.plugin_env(command, box)
            exit_code, answer = agent_answers(node.socket, encode_request(environ, data))
            printed = json.dumps(answer).encode()
        error = json.loads(printed)
        assert exit_code == 1, (name, printed)
        assert error["code"] == code and msg in error["msg"], (name, error)
        assert set(error) <= {"cniVersion", "code", "msg", "details"}
    # The agent lived through all of it, and the relay never failed open.
    assert node.agent.poll() is None
    assert node.http("/readyz")[0] == 200
    assert not node.log_file.exists()


def test_the_relay_is_static_and_names_the_versions_the_agent_serves(tmp_path) -> None:
    binary = relay_binary().read_bytes()
    # No program interpreter (PT_INTERP, type 3) among the ELF program headers: static.
    phoff = int.from_bytes(binary[0x20:0x28], "little")
    size, count = (int.from_bytes(binary[0x36:0x38], "little"),
                   int.from_bytes(binary[0x38:0x3A], "little"))  # fmt: skip
    types = [int.from_bytes(binary[phoff + i * size : phoff + i * size + 4], "little")
             for i in range(count)]  # fmt: skip
    assert binary[:4] == b"\x7fELF" and types and 3 not in types and 2 not in types
    done = subprocess.run([str(relay_binary())], env={"CNI_COMMAND": "VERSION"},
                          capture_output=True, timeout=10, check=False)  # fmt: skip
    assert json.loads(done.stdout) == {
        "cniVersion": "1.1.0",
        "supportedVersions": list(plugin.SUPPORTED_VERSIONS),
    }


def test_the_relays_log_is_capped(tmp_path) -> None:
    log = tmp_path / "relay.log"
    log.write_text("x" * (1 << 20) + "\n")
    config = {"cniVersion": "1.0.0", "name": "n", "type": "proxy-injector",
              "agentSocket": str(tmp_path / "nobody.sock"), "logFile": str(log)}  # fmt: skip
    done = subprocess.run([str(relay_binary())], input=json.dumps(config).encode(),
                          env={"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1"},
                          capture_output=True, timeout=10, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"")
    assert (tmp_path / "relay.log.1").stat().st_size > 1 << 20
    assert "DEL pod=/ container=c1: agent at" in log.read_text()
    assert os.stat(log).st_mode & 0o777 == 0o600


def test_sigterm_takes_the_plugin_out_and_a_restart_clears_what_sigkill_left(node) -> None:
    node.start_agent()
    node.wait_ready()
    node.kill_agent(signal.SIGKILL)
    assert node.socket.exists()  # what SIGKILL leaves: a stale socket, the relay, the entry
    node.start_agent()
    node.wait_ready()
    assert "removed" not in node.agent_log() or "left by an earlier instance" in node.agent_log()
    node.kill_agent(signal.SIGTERM)
    assert node.agent.returncode == 0
    assert [p["type"] for p in node.conflist()["plugins"]] == ["bridge"]
    assert not (node.bin_dir / "proxy-injector").exists()
    assert not node.socket.exists()


def test_the_pod_cache_lists_again_after_410_gone(node) -> None:
    node.api.put_pod(pod_spec("shop", "web-0", meshed=True))
    node.start_agent()
    node.wait_ready()
    node.api.compact()  # the watch's resourceVersion is now too old
    node.api.put_pod(pod_spec("shop", "web-1", meshed=True))
    wait_for(lambda: "proxy_injector_cni_cached_pods 2.0" in node.http("/metrics")[1], 20, "relist")
    assert "pod watch expired (410 Gone): listing the node's pods again" in node.agent_log()
    watches = [path for method, path, _ in node.api.requests if method == "WATCH"]
    assert all("allowWatchBookmarks=true" in p and "resourceVersion=" in p for p in watches)


def test_every_version_is_answered_in_the_version_asked(node) -> None:
    node.start_agent()
    node.wait_ready()
    plain = node.api.put_pod(pod_spec("shop", "legacy-0", meshed=False))
    box = node.sandbox("shop", "legacy-0", plain["metadata"]["uid"])
    for version in plugin.SUPPORTED_VERSIONS:
        prev = {"cniVersion": version, "ips": [{"address": "10.233.0.9/24"}]}
        added = node.ours("ADD", box, prev, version=version)
        assert (added.returncode, json.loads(added.stdout)) == (0, prev), version
        refused = node.ours("ADD", box, version=version, args={"cni": []})
        assert json.loads(refused.stdout)["cniVersion"] == version
        check = node.ours("CHECK", box, prev, version=version)
        if version.startswith("0.3."):  # CHECK came with 0.4.0
            assert json.loads(check.stdout)["code"] == plugin.INCOMPATIBLE_VERSION
        else:
            assert (check.returncode, check.stdout) == (0, b""), version
