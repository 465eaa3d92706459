"""``proxy-injector cni``: the CNI plugin (spec 1.0.0) for ``interception: cni``, chained
after the cluster's own plugin.

On ``ADD`` it looks the pod up (``K8S_POD_NAMESPACE`` and ``K8S_POD_NAME`` in
``CNI_ARGS``) through the Kubernetes API with the kubeconfig the installer left, and only
for a pod the injector meshed in cni mode (its ``proxy.io/interception-spec``) enters
``CNI_NETNS`` and applies exactly what ``init-iptables`` applies. Every other pod is left
alone. ``prevResult`` passes through unchanged. A failure is a CNI error result, which
makes the runtime retry: a meshed pod never starts without its rules. ``DEL`` has nothing
to undo (the rules go with the network namespace); ``CHECK`` says whether they are there.

It runs for every pod on the node, so what a pod that is not ours pays is one API read:
nothing of the engine or of the rules is imported for it.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, TextIO

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
DEFAULT_KUBECONFIG = "/etc/cni/net.d/proxy-injector-kubeconfig"
# The names in webhook.engine.names, written again: importing them would load the engine
# for every pod on the node (a test keeps the two the same).
INTERCEPTION_KEY = "proxy.io/interception-spec"
INTERCEPTION_SPEC_VERSION = 1
STATUS_KEY = "proxy.io/status"
API_TIMEOUT = 5.0
CLONE_NEWNET = 0x40000000
# CNI's well-known error codes (SPEC.md, "Error"), and ours from 100 up.
INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, DECODING_FAILURE, TRY_AGAIN_LATER = 1, 4, 6, 11
POD_LOOKUP_FAILED, RULES_FAILED, RULES_MISSING = 100, 101, 102


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass(frozen=True)
class Request:
    command: str
    netns: str
    pod_namespace: str | None
    pod_name: str | None
    config: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion", "1.0.0"))


def _cni_args(text: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in text.split(";") if item)
    return {key: value for key, _, value in pairs}


def request(environ: dict[str, str], stdin: str) -> Request:
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return Request(command, "", None, None, {})
    try:
        config = json.loads(stdin or "{}")
    except json.JSONDecodeError as exc:
        raise CniError(
            DECODING_FAILURE, "the network configuration is not JSON", str(exc)
        ) from None
    if not isinstance(config, dict):
        raise CniError(DECODING_FAILURE, "the network configuration is not a JSON object")
    # CNI_ARGS, over the network config's "args": {"cni": {...}} (a runtime that cannot set
    # CNI_ARGS, such as podman, says the pod's namespace there).
    conventional = (config.get("args") or {}).get("cni") or {}
    args = {
        **{k: str(v) for k, v in conventional.items()},
        **_cni_args(environ.get("CNI_ARGS", "")),
    }
    if command in ("ADD", "CHECK") and not environ.get("CNI_NETNS"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS is not set for {command}")
    return Request(
        command,
        environ.get("CNI_NETNS", ""),
        args.get("K8S_POD_NAMESPACE"),
        args.get("K8S_POD_NAME"),
        config,
    )


def _api(kubeconfig_path: str) -> tuple[str, ssl.SSLContext | None, dict[str, str]]:
    """Server, TLS context and headers from the kubeconfig the installer wrote (JSON, which
    kubectl reads too)."""
    try:
        with open(kubeconfig_path) as handle:
            kubeconfig = json.load(handle)
        cluster = kubeconfig["clusters"][0]["cluster"]
        user = kubeconfig["users"][0]["user"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise CniError(
            POD_LOOKUP_FAILED, f"cannot read the kubeconfig {kubeconfig_path}", repr(exc)
        ) from None
    context = None
    if cluster["server"].startswith("https:"):
        context = ssl.create_default_context()
        if "certificate-authority-data" in cluster:
            ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
            context.load_verify_locations(cadata=ca)
        elif "certificate-authority" in cluster:
            context.load_verify_locations(cafile=cluster["certificate-authority"])
    headers = {"Accept": "application/json"}
    token = user.get("token")
    if not token and user.get("tokenFile"):
        with open(user["tokenFile"]) as handle:
            token = handle.read().strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return cluster["server"].rstrip("/"), context, headers


def fetch_pod(kubeconfig_path: str, namespace: str, name: str) -> dict[str, Any]:
    server, context, headers = _api(kubeconfig_path)
    url = f"{server}/api/v1/namespaces/{namespace}/pods/{name}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=API_TIMEOUT, context=context
        ) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise CniError(
            POD_LOOKUP_FAILED, f"the Kubernetes API answered {exc.code} for pod {namespace}/{name}"
        ) from None
    except (OSError, ValueError) as exc:
        raise CniError(
            TRY_AGAIN_LATER, f"cannot read pod {namespace}/{name} from {server}", str(exc)
        ) from None


def wanted_flags(pod: dict[str, Any]) -> list[str] | None:
    """The init-iptables flags for a pod the injector meshed in cni mode; None otherwise."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(INTERCEPTION_KEY)
    if raw is None or STATUS_KEY not in annotations:
        return None
    try:
        spec = json.loads(raw)
        version, flags = spec["version"], spec["initIptables"]
    except (ValueError, KeyError, TypeError):
        raise CniError(
            RULES_FAILED, f"annotation {INTERCEPTION_KEY} is not valid: {raw[:200]}"
        ) from None
    if version != INTERCEPTION_SPEC_VERSION:
        raise CniError(
            RULES_FAILED,
            f"annotation {INTERCEPTION_KEY} version {version!r} is not one this plugin "
            f"applies ({INTERCEPTION_SPEC_VERSION}): upgrade the plugin with the injector",
        )
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise CniError(
            RULES_FAILED, f"annotation {INTERCEPTION_KEY}: initIptables is not a list of flags"
        )
    return flags


def enter(netns: str) -> None:
    """Move this process (it has one thread) into the pod's network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(netns, os.O_RDONLY)
    except OSError as exc:
        raise CniError(INVALID_ENVIRONMENT, f"cannot open CNI_NETNS {netns}", str(exc)) from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise CniError(INVALID_ENVIRONMENT, f"cannot enter {netns}", os.strerror(error))
    finally:
        os.close(fd)


def apply_rules(flags: list[str], backend: str) -> None:
    from webhook import iptables
    from webhook.cli import interception

    try:
        spec = interception(flags)
        chosen = iptables.detect_backend() if backend == "auto" else backend
        iptables.apply(iptables.plan(spec, chosen), chosen)
    except (ValueError, iptables.InterceptionError) as exc:
        raise CniError(
            RULES_FAILED, "the pod's interception rules were not applied", str(exc)
        ) from None


def _meshed_flags(req: Request) -> list[str] | None:
    if not (req.pod_namespace and req.pod_name):
        return None  # not a Kubernetes pod: nothing of ours
    kubeconfig = req.config.get("kubeconfig", DEFAULT_KUBECONFIG)
    return wanted_flags(fetch_pod(kubeconfig, req.pod_namespace, req.pod_name))


def handle(req: Request) -> dict[str, Any] | None:
    """The result to print (None: print nothing)."""
    if req.command == "VERSION":
        return {"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}
    if req.version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {req.version} is not supported")
    if req.command == "ADD":
        flags = _meshed_flags(req)
        if flags is not None:
            enter(req.netns)
            apply_rules(flags, str(req.config.get("iptablesBackend", "auto")))
        return req.config.get("prevResult") or {"cniVersion": req.version}
    if req.command == "CHECK":
        flags = _meshed_flags(req)
        if flags is not None:
            from webhook.iptables import holds_interception

            enter(req.netns)
            if not holds_interception():
                raise CniError(RULES_MISSING, "the pod's interception rules are missing")
        return None
    if req.command in ("DEL", "GC", "STATUS"):
        return None  # the rules live and die with the pod's network namespace
    raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {req.command!r} is not one this plugin knows")


def main(environ: dict[str, str] | None = None, stdin: TextIO | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    text = (stdin or sys.stdin).read() if environ.get("CNI_COMMAND") != "VERSION" else ""
    version = "1.0.0"
    try:
        req = request(environ, text)
        version = req.version or version
        result = handle(req)
    except CniError as exc:
        error = {"cniVersion": version, "code": exc.code, "msg": exc.msg, "details": exc.details}
        print(json.dumps(error))
        return 1
    if result is not None:
        print(json.dumps(result))
    return 0
