"""The mesh config file: every field defaults, bad input is named precisely."""

from __future__ import annotations

from decimal import Decimal

import pytest

from webhook.common.mesh_config import load
from webhook.engine.config import ConfigError, MeshConfig, from_mapping


def test_an_empty_file_gives_the_defaults(tmp_path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("")
    assert load(path) == MeshConfig()


def test_a_configmap_style_file_overrides_fields(tmp_path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "proxyImage: mirror.example/envoy:v1.40.0\n"
        "resources: {cpu: 200m, memoryLimit: 512Mi}\n"
        "excludeOutboundPorts: [5432, 6379]\n"
        "excludeOutboundIPRanges: [169.254.169.254/32]\n"
        "neverInjectNamespaces: [kube-system, monitoring]\n"
    )
    config = load(path)
    assert config.proxy_image == "mirror.example/envoy:v1.40.0"
    assert config.resources.cpu == Decimal("0.2")
    assert config.resources.memory_limit == 512 * 2**20
    assert config.resources.memory == 128 * 2**20
    assert config.exclude_outbound_ports == (5432, 6379)
    assert config.exclude_outbound_ip_ranges == ("169.254.169.254/32",)
    assert config.never_inject_namespaces == ("kube-system", "monitoring")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"proxyImge": "x"}, "proxyImge: unknown field"),
        ({"resources": {"cpu": "lots"}}, 'resources.cpu: "lots" is not valid'),
        ({"concurrency": 0}, "concurrency: 0 is not valid"),
        ({"upstream": "unix"}, 'upstream: "unix" is not valid'),
        ({"udsPath": "relative.sock"}, 'udsPath: "relative.sock" is not valid'),
        ({"shm": {"sizeFraction": 2}}, "shm.sizeFraction: 2 is not valid"),
        ({"excludeInboundPorts": "*"}, "excludeInboundPorts"),
        (["not", "a", "mapping"], "expected a mapping at the top level"),
    ],
)
def test_bad_config_is_refused_naming_the_field(data, message) -> None:
    with pytest.raises(ConfigError) as error:
        from_mapping(data)
    assert message in str(error.value)


def test_unreadable_and_invalid_yaml_files_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("resources: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load(broken)


def test_the_documented_mesh_config_is_the_default_config() -> None:
    import re
    from pathlib import Path

    import yaml

    page = (Path(__file__).parents[2] / "docs" / "mesh-config.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", page, re.S)
    assert block, "docs/mesh-config.md has no mesh config block"
    assert from_mapping(yaml.safe_load(block.group(1))) == MeshConfig()


def test_the_shipped_config_map_and_the_defaults_are_one_generation() -> None:
    """Quantities read from text ("64Mi") and the defaults (64 MiB) are the same config:
    a webhook running the shipped ConfigMap must not make pods look stale to a check
    judging with the defaults, nor the other way round."""
    from pathlib import Path

    import yaml

    from webhook.engine.config import MeshConfig, parse

    shipped = yaml.safe_load(
        (Path(__file__).parents[2] / "deploy/base/mesh-config.yaml").read_text()
    )
    config = parse(shipped["data"]["mesh.yaml"])
    assert config.sidecar_generation == MeshConfig().sidecar_generation
    assert config.generation == MeshConfig().generation
    assert parse("resources:\n  cpu: 200m\n").sidecar_generation != MeshConfig().sidecar_generation
