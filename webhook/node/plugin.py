"""The CNI protocol as the agent speaks it (pure): a request from the relay's environment and
network configuration, which versions allow which commands, and the results and errors.

The relay (``relay.c``) checks the same things before it forwards anything; the agent checks
them again, since anything that can reach its socket can send it anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from webhook.common.inputs import nests_deeper

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
NEWEST = SUPPORTED_VERSIONS[-1]
# Commands younger than some versions (skel refuses them the same way).
SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}
MAX_DEPTH = 64

# CNI's well-known error codes (SPEC.md, "Error"), and ours from 100 up.
INCOMPATIBLE_VERSION = 1
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
RULES_FAILED = 101
RULES_MISSING = 102


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def result(self, version: str) -> dict[str, Any]:
        error: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            error["details"] = self.details
        return error


@dataclass(frozen=True)
class Request:
    command: str
    version: str
    netns: str
    pod_namespace: str | None
    pod_name: str | None
    pod_uid: str | None
    config: dict[str, Any]

    @property
    def pod(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"

    def passed_through(self) -> dict[str, Any]:
        """ADD's result when this plugin changes nothing: the previous plugin's."""
        return self.config.get("prevResult") or {"cniVersion": self.version}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _config(stdin: bytes) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except RecursionError:
        raise CniError(DECODING_FAILURE, "the network configuration nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(
            DECODING_FAILURE, "the network configuration is not valid JSON", str(exc)
        ) from None
    if not isinstance(config, dict):
        raise CniError(DECODING_FAILURE, "the network configuration is not a JSON object")
    if nests_deeper(config, MAX_DEPTH):
        raise CniError(DECODING_FAILURE, f"the network configuration nests deeper than {MAX_DEPTH}")
    return config


def _version(config: dict[str, Any], command: str) -> str:
    version = config.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported ({', '.join(SUPPORTED_VERSIONS)})",
        )
    since = SINCE.get(command)
    if since and _version_tuple(version) < _version_tuple(since):
        raise CniError(
            INCOMPATIBLE_VERSION, f"cniVersion {version} does not allow {command} ({since} does)"
        )
    return version


def _cni_args(text: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in text.split(";") if item)
    return {key: value for key, _, value in pairs}


def _conventional_args(config: dict[str, Any]) -> dict[str, str]:
    """The network config's ``"args": {"cni": {...}}`` (a runtime that cannot set CNI_ARGS,
    such as podman, says the pod's namespace there)."""
    args = config.get("args", {})
    if not isinstance(args, dict):
        raise CniError(INVALID_CONFIG, "args is not a JSON object")
    cni = args.get("cni", {})
    if not isinstance(cni, dict):
        raise CniError(INVALID_CONFIG, "args.cni is not a JSON object")
    return {str(key): str(value) for key, value in cni.items()}


def request(environ: dict[str, str], stdin: bytes) -> Request:
    """Raises CniError saying what is wrong with the request; ``.version`` of the error's
    result is the request's where it could be read."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one this plugin knows")
    config = _config(stdin)
    version = _version(config, command)
    prev = config.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult is not a JSON object")
    args = {**_conventional_args(config), **_cni_args(environ.get("CNI_ARGS", ""))}
    netns = environ.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS is not set for {command}")
    return Request(
        command,
        version,
        netns,
        args.get("K8S_POD_NAMESPACE"),
        args.get("K8S_POD_NAME"),
        args.get("K8S_POD_UID"),
        config,
    )


def requested_version(stdin: bytes) -> str:
    """The version to answer an error in: the request's if it is one we speak."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, RecursionError, UnicodeDecodeError):
        return NEWEST
    return version if version in SUPPORTED_VERSIONS else NEWEST
