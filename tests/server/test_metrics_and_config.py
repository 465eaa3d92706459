"""Day two on the running server: Prometheus metrics scraped over HTTPS (and plain HTTP),
parsed with prometheus-client's own parser, and the mesh config swapped under traffic."""

from __future__ import annotations

import copy
import http.client
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import free_port, wait_for
from tests.server.test_server_resilience import served, status
from tests.support import CORPUS, apply, container, load_case, patch_of, review

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]


def annotated(annotations: dict[str, str]) -> dict:
    pod = copy.deepcopy(WEB)
    pod["metadata"]["annotations"] = annotations
    return pod


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def mutate(connection: http.client.HTTPSConnection, pod: dict) -> dict:
    code, body, _ = status(connection, "POST", "/mutate", json.dumps(review(pod)).encode())
    assert code == 200
    return json.loads(body)["response"]


def test_metrics_count_a_known_mix_of_admissions_exactly(tmp_path) -> None:
    plain = free_port()
    with served(tmp_path, "--metrics-port", str(plain)) as server:
        connection = server.connection()
        mix = [
            (annotated({}), 3),
            (annotated({"proxy.io/inject": "false"}), 2),
            (annotated({"proxy.io/concurrency": "lots"}), 1),
        ]
        for pod, times in mix:
            for _ in range(times):
                mutate(connection, pod)
        _, text, _ = status(connection, "GET", "/metrics")
        scraped = samples(text.decode())
        plain_text = http.client.HTTPConnection("127.0.0.1", plain, timeout=10)
        plain_text.request("GET", "/metrics")
        over_http = samples(plain_text.getresponse().read().decode())
    counted = {
        (labels[0][1], labels[1][1]): value
        for (name, labels), value in scraped.items()
        if name == "proxy_injector_admissions_total"
    }
    assert counted == {
        ("inject", "injected"): 3,
        ("skip", "opted_out_by_annotation"): 2,
        ("deny", "invalid_annotation"): 1,
    }
    assert scraped["proxy_injector_admission_duration_seconds_count", ()] == 6
    assert scraped["proxy_injector_build_info", (("version", "0.3.0"),)] == 1
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    expiry = scraped["proxy_injector_certificate_expiry_timestamp_seconds", ()]
    assert expiry == cert.not_valid_after_utc.timestamp()
    assert over_http["proxy_injector_admission_duration_seconds_count", ()] == 6


def start_wrk(server, folder: Path, seconds: int) -> subprocess.Popen[str]:
    """wrk posting reviews over HTTPS for ``seconds``, in the background."""
    script = folder / "post.lua"
    body = json.dumps(review(WEB))
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body}]==]\n"
    )
    url = f"https://127.0.0.1:{server.port}/mutate"
    command = ["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", str(script), url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def proxy_image(answer: dict, pod: dict) -> str:
    return container(apply(pod, patch_of({"response": answer})), "proxy")["image"]


class MountedConfig:
    """Config files and the symlink a ConfigMap mount reads through, swapped atomically
    as the kubelet swaps it; starts at old.yaml (registry.example/envoy:old)."""

    def __init__(self, tmp_path: Path, files: dict[str, bytes]) -> None:
        self.folder, self.link = tmp_path / "configs", tmp_path / "mesh.yaml"
        self.folder.mkdir()
        files = {
            "old.yaml": b"proxyImage: registry.example/envoy:old\n",
            "new.yaml": b"proxyImage: registry.example/envoy:new\n",
            **files,
        }
        for name, data in files.items():
            (self.folder / name).write_bytes(data)
        self.link.symlink_to(self.folder / "old.yaml")
        self.flags = ("--config", str(self.link), "--config-reload-seconds", "0.1")

    def swap_to(self, name: str) -> None:
        swap = self.link.with_name("swap")
        swap.symlink_to(self.folder / name)
        swap.replace(self.link)


def test_a_swapped_config_applies_from_one_answer_on_and_a_broken_one_is_ignored(
    tmp_path,
) -> None:
    mounted = MountedConfig(tmp_path, {"broken.yaml": b"proxyImage: [not an image\n"})
    with served(tmp_path, *mounted.flags) as server:
        answers: list[list[str]] = [[], [], []]
        failures: list[str] = []
        stop = threading.Event()

        def client(seen: list[str]) -> None:
            connection = server.connection()
            while not stop.is_set():
                try:
                    seen.append(proxy_image(mutate(connection, WEB), WEB))
                except Exception as exc:  # a failed request is what this test looks for
                    failures.append(repr(exc))

        threads = [threading.Thread(target=client, args=(seen,)) for seen in answers]
        seen = answers[0]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(seen) > 50, 20, "answers with the old config")
        load = start_wrk(server, tmp_path, seconds=5)
        mounted.swap_to("new.yaml")
        wait_for(lambda: seen[-1].endswith(":new"), 10, "answers with the new config")
        after_swap = len(seen)
        mounted.swap_to("broken.yaml")
        time.sleep(1)
        wait_for(lambda: len(seen) > after_swap + 50, 20, "answers after the broken config")
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        wrk_output, _ = load.communicate(timeout=60)
        _, text, _ = status(server.connection(), "GET", "/metrics")
        ready = status(server.connection(), "GET", "/readyz")[0]
    assert not failures, failures[:3]
    # The load generator across both swaps: every request answered with a 200.
    assert int(re.search(r"(\d+) requests in", wrk_output).group(1)) > 100, wrk_output
    assert "Non-2xx" not in wrk_output and "Socket errors" not in wrk_output, wrk_output
    for images in answers:
        # Each client's answers, in the order it got them: old until the swap, new after,
        # and never back (the broken config changed nothing).
        switch = images.index("registry.example/envoy:new")
        assert switch > 0
        assert set(images[:switch]) == {"registry.example/envoy:old"}
        assert set(images[switch:]) == {"registry.example/envoy:new"}
    scraped = samples(text.decode())
    assert scraped["proxy_injector_config_reloads_total", (("result", "ok"),)] == 1
    assert scraped["proxy_injector_config_reloads_total", (("result", "error"),)] == 1
    assert ready == 200
    logged = [json.loads(line) for line in Path(server.log).read_text().splitlines()]
    (rejected,) = [line for line in logged if line["msg"].startswith("new mesh config not loaded")]
    assert "not valid YAML" in rejected["error"]


def test_a_config_that_fails_validation_is_logged_with_field_and_value(tmp_path, caplog) -> None:
    from webhook.engine.config import MeshConfig
    from webhook.server.live_config import LiveConfig
    from webhook.server.metrics import Metrics

    path = tmp_path / "mesh.yaml"
    path.write_text("logLevel: info\n")
    live = LiveConfig(path, MeshConfig(), Metrics())
    before = live.current
    path.write_text("logLevel: loud\nresources: {cpuLimit: two}\n")
    assert live.check() is False
    assert live.current is before
    (record,) = [r for r in caplog.records if r.name == "proxy_injector.config"]
    assert 'logLevel: "loud" is not valid' in record.error
    assert 'resources.cpuLimit: "two" is not valid' in record.error
    assert live.metrics.config_reloads.labels("error")._value.get() == 1


ALIAS_BOMB = "".join(
    [
        "l0: &l0 [x, x, x, x, x, x, x, x, x]\n",
        *(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)),
    ]
)
"""562 bytes that expand to 9^9 strings."""


def test_hostile_configs_are_errors_the_server_lives_through_and_a_valid_one_still_loads(
    tmp_path,
) -> None:
    hostile = {
        "aliases.yaml": (ALIAS_BOMB + "nodeShm: {namespaces: *l8}\n").encode(),
        "pull-secrets.yaml": (ALIAS_BOMB + "imagePullSecrets: *l8\n").encode(),
        "latin1.yaml": "proxyImage: registry.example/envoy:caf\xe9\n".encode("latin-1"),
        "deep.yaml": b"nodeShm: {namespaces: " + b"[" * 5000 + b"]" * 5000 + b"}\n",
        "huge.yaml": b"# padding\n" * 200_000,
    }
    mounted = MountedConfig(tmp_path, hostile)
    with served(tmp_path, *mounted.flags) as server:

        def errors() -> float:
            _, text, _ = status(server.connection(), "GET", "/metrics")
            return samples(text.decode())[
                "proxy_injector_config_reloads_total", (("result", "error"),)
            ]

        for count, name in enumerate(hostile, start=1):
            mounted.swap_to(name)
            started = time.monotonic()
            while errors() < count:
                assert time.monotonic() - started < 10, f"{name} not counted as an error"
                took = time.monotonic()
                assert status(server.connection(timeout=2), "GET", "/healthz")[0] == 200
                assert time.monotonic() - took < 1, f"/healthz slow while reading {name}"
            assert proxy_image(mutate(server.connection(), WEB), WEB).endswith(":old"), name
        mounted.swap_to("new.yaml")
        wait_for(
            lambda: proxy_image(mutate(server.connection(), WEB), WEB).endswith(":new"),
            10,
            "the valid config in force",
        )
    logged = [json.loads(line) for line in Path(server.log).read_text().splitlines()]
    reasons = [line["error"] for line in logged if line["msg"].startswith("new mesh config not")]
    assert len(reasons) == len(hostile)
    assert "aliases (*name) are not allowed in mesh config" in reasons[0]
    assert "not UTF-8 text: byte 0xe9" in reasons[2]
    assert "nested deeper than 32 levels" in reasons[3]
    assert "larger than 1024 KiB" in reasons[4]


def test_a_mounted_config_map_is_read_as_the_base_and_each_components_layer(
    tmp_path, caplog
) -> None:
    """--config=<the mounted ConfigMap>: mesh.yaml, then every other *.yaml by name, laid
    over it; the kubelet swaps the whole set at once (``..data``) and the webhook follows,
    keeping the old config when a layer is wrong and naming it."""
    from tests.identity import ProjectedVolume
    from webhook.common import mesh_config
    from webhook.server.live_config import LiveConfig
    from webhook.server.metrics import Metrics

    base = (Path(__file__).parents[2] / "deploy/base/mesh-config.yaml").read_text()
    base_text = yaml.safe_load(base)["data"]["mesh.yaml"]
    volume = ProjectedVolume(tmp_path / "mesh")
    volume.write({"mesh.yaml": base_text.encode(), "cni.yaml": b"interception: cni\n"})
    loaded = mesh_config.load(volume.root)
    assert loaded.interception == "cni" and loaded.log_level == "warning"
    live = LiveConfig(volume.root, loaded, Metrics())
    volume.write(
        {
            "mesh.yaml": base_text.encode(),
            "cni.yaml": b"interception: cni\n",
            "mtls.yaml": b"mtls:\n  identity: pod-certificate\n",
        }
    )
    assert live.check() is True
    assert (live.current.interception, live.current.mtls.identity) == ("cni", "pod-certificate")
    assert live.current.mtls.trust_domain == "cluster.local"  # merged, not replaced
    volume.write({"mesh.yaml": base_text.encode(), "mtls.yaml": b"mtls:\n  identty: x\n"})
    assert live.check() is False
    assert live.current.interception == "cni"  # the old config stays in force
    (record,) = [r for r in caplog.records if r.name == "proxy_injector.config"]
    assert "mtls.identty: unknown field" in record.error
    assert "mesh.yaml, mtls.yaml" in record.error
