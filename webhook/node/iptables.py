"""``proxy-injector init-iptables``: apply the interception rules in the pod's network
namespace with iptables-restore, failing loudly rather than leaving a pod that bypasses
the proxy."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from webhook.node.interception import JUMPS, Interception, jump_rule, render

BACKENDS = ("nft", "legacy")
Run = Callable[[list[str], str | None], subprocess.CompletedProcess[str]]


class InterceptionError(RuntimeError):
    pass


def _run(command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


@dataclass(frozen=True)
class Tools:
    main: str
    save: str
    restore: str


def tools(backend: str, family: int) -> Tools:
    name = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}"
    return Tools(name, f"{name}-save", f"{name}-restore")


def _rule_count(backend: str, run: Run) -> int:
    """Rules this backend holds; -1 when it is not installed. A save that fails (no
    NET_ADMIN, say) counts 0: applying will then fail with the real reason."""
    save = tools(backend, 4).save
    if shutil.which(save) is None:
        return -1
    result = run([save], None)
    if result.returncode != 0:
        return 0
    return sum(line.startswith("-A") for line in result.stdout.splitlines())


def detect_backend(run: Run = _run) -> str:
    """As istio-init does: the backend that already holds rules in this namespace wins;
    with none anywhere, the one ``iptables`` itself is."""
    counts = {backend: _rule_count(backend, run) for backend in BACKENDS}
    available = [b for b in BACKENDS if counts[b] >= 0]
    if not available:
        raise InterceptionError(
            "no iptables found: neither iptables-nft-save nor "
            "iptables-legacy-save is installed in the init image"
        )
    best = max(available, key=lambda b: counts[b])
    if counts[best] > 0 or len(available) == 1:
        return best
    version = run(["iptables", "--version"], None).stdout if shutil.which("iptables") else ""
    return "legacy" if "legacy" in version else "nft"


def _existing_jumps(backend: str, family: int, run: Run) -> list[str]:
    result = run([tools(backend, family).save, "-t", "nat"], None)
    wanted = {jump_rule(b, c) for b, c in JUMPS}
    return [line for line in result.stdout.splitlines() if line in wanted]


def _explain(stderr: str, probe: str = "") -> str:
    """Why a restore failed. Legacy iptables-restore says only "unable to initialize table
    'nat'" both without NET_ADMIN and without a nat table, so ``probe`` (the error of a
    plain listing of the nat table) tells them apart."""
    both = stderr + probe
    if "Permission denied" in both or "Operation not permitted" in both:
        return "no permission to change iptables: the init container needs NET_ADMIN and NET_RAW"
    if "table `nat'" in both or "does not exist" in both or "Table does not exist" in both:
        return "the kernel has no nat table (iptable_nat / nf_nat not available on this node)"
    return stderr.strip()[-500:]


def ipv6_available() -> bool:
    return os.path.exists("/proc/net/if_inet6")


def families(spec: Interception) -> list[int]:
    if spec.wants_ipv6() and not ipv6_available():
        raise InterceptionError("IPv6 ranges were given but this kernel has IPv6 disabled")
    return [4, 6] if ipv6_available() else [4]


def plan(spec: Interception, backend: str, run: Run = _run) -> dict[int, str]:
    documents = {}
    for family in families(spec):
        if shutil.which(tools(backend, family).restore) is None:
            raise InterceptionError(f"{tools(backend, family).restore} is not installed")
        documents[family] = render(spec, family, _existing_jumps(backend, family, run))
    return documents


def apply(documents: dict[int, str], backend: str, run: Run = _run) -> None:
    for family, document in documents.items():
        names = tools(backend, family)
        result = run([names.restore, "--noflush"], document)
        if result.returncode != 0:
            probe = run([names.main, "-t", "nat", "-S"], None).stderr
            raise InterceptionError(
                f"IPv{family} rules were not applied: {_explain(result.stderr, probe)}"
            )


def holds_interception(run: Run = _run) -> bool:
    """Whether this network namespace jumps to our chains, in either backend."""
    wanted = {jump_rule(builtin, chain) for builtin, chain in JUMPS}
    for backend in BACKENDS:
        save = tools(backend, 4).save
        if shutil.which(save) and wanted <= set(run([save, "-t", "nat"], None).stdout.splitlines()):
            return True
    return False
