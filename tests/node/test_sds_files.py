"""The proxy's SDS files, written by the init container from its own args (``--sds-dir``,
``--sds-file``): by proxy-init before its rules, by proxy-validate (cni mode) before its
check, each file whole, and a bad flag refused naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from webhook.engine import Outcome, inject
from webhook.engine.config import from_mapping

CLI = [sys.executable, "-m", "webhook"]
MESH = from_mapping({"mtls": {"identity": "pod-certificate"}, "interception": "cni"})


def _validate_args() -> list[str]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0"},
        "spec": {"containers": [{"name": "web", "image": "web:1"}]},
    }
    result = inject(pod, "shop", MESH)
    assert result.outcome == Outcome.INJECT, result.message
    init = next(op["value"] for op in result.patch if op["path"].startswith("/spec/initContainers"))
    init = init[0] if isinstance(init, list) else init
    assert init["name"] == "proxy-validate"
    assert init["volumeMounts"] == [{"name": "proxy-sds", "mountPath": "/var/run/proxy-sds"}]
    return init["args"]


def test_proxy_validate_writes_the_sds_files_before_its_check(tmp_path: Path) -> None:
    args = _validate_args()
    args[args.index("--sds-dir") + 1] = str(tmp_path)
    args[args.index("--connect") + 1] = "192.0.2.1:9"
    done = subprocess.run(
        [*CLI, *args, "--timeout", "0.2"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode in (1, 95), done.stderr  # nothing redirects here: the check fails
    files = {p.name: json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert set(files) == {"identity.json", "trust-bundle.json"}
    assert files["identity.json"]["resources"][0]["name"] == "identity"
    assert (tmp_path / "identity.json").stat().st_mode & 0o777 == 0o644


def test_a_bad_sds_flag_is_refused_naming_it(tmp_path: Path) -> None:
    """Refused before any rule is applied (the host's own iptables stay untouched)."""
    directory = ["--sds-dir", str(tmp_path)]
    for flags, named in (
        (["--sds-file", "../escape.json={}", *directory], "--sds-file '../escape.json={}'"),
        (["--sds-file", "identity.json=not json", *directory], "--sds-file identity.json: the"),
        (["--sds-file", "identity.json={}"], "--sds-file needs --sds-dir"),
    ):
        done = subprocess.run(
            [*CLI, "init-iptables", *flags], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 1 and named in done.stderr, done.stderr
        assert list(tmp_path.iterdir()) == []
