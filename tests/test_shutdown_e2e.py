"""Pod termination with the proxy as a regular container, for real: the kubelet sends
SIGTERM to the app and runs the proxy's preStop hook at the same time, and stops the proxy
once the hook returns. The app is uvicorn on a Unix socket, the proxy the generated
bootstrap in Envoy (UID 1337), in a network namespace with the pod's rules. The app runs
as root: its interpreter may sit in a checkout other users cannot enter (fresh clones in
0700 temp directories), and any UID but 1337 is the app to the rules and the hooks."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns
from tests.meshed_pod import MeshedPod, injected
from tests.processes import shared_folder, wait_for
from tests.remap import moved_admin
from tests.support import container
from webhook.engine.lifecycle import outlive_the_app

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]

APPS = str(Path(__file__).parent / "apps")
URL = f"http://{netns.POD_V4}:8080"
IN_FLIGHT = "cluster.inbound|8080.upstream_rq_total", "cluster.inbound|8080.upstream_rq_completed"


def classic_pod() -> dict:
    return injected(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-0",
                "annotations": {
                    "proxy.io/native-sidecar": "false",
                    "proxy.io/drain-duration": "1s",
                },
            },
            "spec": {
                "terminationGracePeriodSeconds": 20,
                "containers": [
                    {
                        "name": "web",
                        "image": "web:1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ],
            },
        }
    )


@pytest.fixture
def pod():
    backend = "nft" if shutil.which("iptables-nft-restore") else "legacy"
    net = netns.Network().create()
    folder = shared_folder()
    try:
        the_pod = MeshedPod(net, folder, backend, classic_pod())
        applied = the_pod.run_init()
        assert applied.returncode == 0, applied.stderr
        socket = folder / "web-8080.sock"
        uvicorn = [sys.executable, "-m", "uvicorn", "hello:app", "--uds", str(socket)]
        the_pod.app = net.start(
            net.pod, *uvicorn, cwd=APPS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: socket.exists() or the_pod.app.poll() is not None, 20, "the app")
        assert the_pod.app.poll() is None, "the app exited"
        the_pod.start_envoy()
        wait_for(lambda: net.curl(net.client, f"{URL}/")[0] == 200, 20, "the app via the proxy")
        yield the_pod
    finally:
        net.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def request_in_flight(pod: MeshedPod, seconds: float) -> subprocess.Popen:
    """A client request the app answers after ``seconds``; returns once the app has it."""
    curl = ["curl", "-s", "--max-time", "60", "-w", "\\n%{http_code}", f"{URL}/slow?{seconds}"]
    client = subprocess.Popen(
        pod.net.exec(pod.net.client, *curl), stdout=subprocess.PIPE, text=True
    )
    pod.net.processes.append(client)
    total, completed = IN_FLIGHT
    wait_for(lambda: pod.stat(total) > pod.stat(completed), 20, "the request at the app")
    return client


def pre_stop(pod: MeshedPod, script: str) -> subprocess.Popen:
    """The hook as the kubelet runs it in the proxy container, the admin volume's paths
    where this pod has it. cwd /: the proxy's user may not enter the checkout."""
    script = moved_admin(script, pod.admin_socket.parent)
    hook = subprocess.Popen(
        pod.as_proxy("bash", "-c", script), cwd="/", stderr=subprocess.PIPE, text=True
    )
    pod.net.processes.append(hook)
    return hook


def exit_times(*processes: subprocess.Popen, timeout: float = 30) -> list[float]:
    """When each process exited (time.monotonic), polling all of them together."""
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(processes) and time.monotonic() < deadline:
        for index, process in enumerate(processes):
            if index not in ended and process.poll() is not None:
                ended[index] = time.monotonic()
        time.sleep(0.02)
    assert len(ended) == len(processes), f"still running after {timeout} s"
    return [ended[index] for index in range(len(processes))]


def test_the_proxy_outlives_the_app_finishing_a_request_it_already_has(pod) -> None:
    client = request_in_flight(pod, 4)
    hook = pre_stop(pod, container(pod.spec, "proxy")["lifecycle"]["preStop"]["exec"]["command"][2])
    pod.app.send_signal(signal.SIGTERM)
    told = time.monotonic()
    app_gone, hook_done = exit_times(pod.app, hook)
    assert hook.returncode == 0, hook.stderr.read()
    answer, _ = client.communicate(timeout=30)
    # The request the app held when told to stop came back whole through the proxy...
    assert answer == "hello over a unix socket\n\n200"
    # ...because the proxy was only let go once the app had finished it: well past the
    # 1 s drain duration, and with the app, not at the end of the 20 s grace period.
    assert hook_done - told > 2.5
    assert abs(hook_done - app_gone) < 5
    pod.envoy.send_signal(signal.SIGTERM)
    assert pod.envoy.wait(timeout=10) == 0


def test_draining_tells_clients_to_close_and_the_wait_ends_with_the_grace_period(pod) -> None:
    request_in_flight(pod, 50)  # the app never lets go within the grace period
    hook = pre_stop(pod, outlive_the_app(drain_seconds=1, grace_seconds=3))

    def told_to_close() -> bool:
        answer = pod.net.run(pod.net.client, "curl", "-si", "--max-time", "5", f"{URL}/")
        return answer.stdout.startswith("HTTP/1.1 200") and "connection: close" in answer.stdout

    wait_for(told_to_close, 10, "a drained listener answering with connection: close")
    assert hook.wait(timeout=30) == 1
    # The slow request, and the connection Envoy keeps open to the app for the next one.
    assert re.fullmatch(
        r"the app still holds [12] connection\(s\) through the proxy after 3s\n",
        hook.stderr.read(),
    )


def test_with_envoy_already_gone_the_hook_returns_after_the_drain_duration(pod) -> None:
    pod.envoy.kill()
    pod.envoy.wait(timeout=10)
    started = time.monotonic()
    hook = pre_stop(pod, outlive_the_app(drain_seconds=1, grace_seconds=20))
    assert hook.wait(timeout=30) == 0, hook.stderr.read()
    assert time.monotonic() - started < 10  # not the 20 s grace period
