"""``inject`` and ``explain`` without a cluster: the webhook's engine applied to the pod
templates of Kubernetes documents (a file, or ``kubectl get -o yaml``).

Pure apart from reading and writing text: the CLI does the I/O.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import jsonpatch
import yaml

from webhook import engine
from webhook.common.inputs import nests_deeper, utf8
from webhook.engine import annotations as annotation_table
from webhook.engine.bootstrap.outbound import SNIFF_TIMEOUT
from webhook.engine.config import MeshConfig
from webhook.engine.pod import InvalidPod, mapping, string_map
from webhook.tools.workloads import Template, named, templates, unknown_kind


class DocumentError(ValueError):
    pass


MAX_BYTES = 64 << 20
MAX_DOCUMENTS = 10_000
MAX_DEPTH = 100
"""Kubernetes objects nest a few dozen levels at most; deeper is not a manifest."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser (linear, fast on large scalars, its own nesting limit, without
    recursion), refusing a key given twice in one mapping as kubectl does, where PyYAML
    would keep the last one silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, str | int | float | bool):
                continue  # not hashable as such: the constructor itself says what is wrong
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call]


def _one_line(exc: yaml.YAMLError) -> str:
    """A parser's message on one line: where, then what (its own is three lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def text_of(data: bytes, max_bytes: int = MAX_BYTES) -> str:
    """The input as text; ``data`` may hold one byte more than ``max_bytes`` (to tell)."""
    if len(data) > max_bytes:
        raise DocumentError(f"larger than {max_bytes} bytes (--max-bytes)")
    try:
        return utf8(data)
    except ValueError as exc:
        raise DocumentError(f"{exc}: not a YAML or JSON manifest") from None


def load(text: str, max_documents: int = MAX_DOCUMENTS) -> list[Any]:
    """Every document of multi-document YAML (JSON is YAML), empty ones left out."""
    documents: list[Any] = []
    read = 0
    try:
        for document in yaml.load_all(text, Loader=_Loader):
            read += 1
            if read > max_documents:
                raise DocumentError(f"more than {max_documents} documents (--max-documents)")
            if nests_deeper(document, MAX_DEPTH):
                raise DocumentError(f"document {read}: nested deeper than {MAX_DEPTH} levels")
            if document is not None:
                documents.append(document)
    except yaml.YAMLError as exc:
        raise DocumentError(
            f"document {read + 1}: not valid YAML or JSON: {_one_line(exc)}"
        ) from None
    except RecursionError:
        raise DocumentError(f"document {read + 1}: nested too deeply") from None
    return documents


def where(index: int, template: Template) -> str:
    return f"document {index + 1} ({template.kind} {template.name})"


@dataclass(frozen=True)
class Answer:
    document: int
    """Index of the document the template is in."""
    template: Template
    namespace: str
    result: engine.InjectionResult


def answers(
    documents: list[Any],
    config: MeshConfig,
    namespace: str | None,
    namespace_labels: Mapping[str, str] | None,
    all_kinds: bool = False,
) -> Iterator[Answer]:
    """The engine's answer for every pod template, in document order; the namespace is
    ``namespace``, else the object's, else default."""
    for index, document in enumerate(documents):
        for template in templates(document, all_kinds=all_kinds):
            target = namespace or template.namespace or "default"
            pod = template.as_created()
            result = engine.inject_or_deny(pod, target, config, namespace_labels)
            yield Answer(index, template, target, result)


@dataclass
class Injected:
    documents: list[Any]
    denials: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changes: list[tuple[int, tuple[str | int, ...], Any]] = field(default_factory=list)
    """(document index, template path, patched template) of each template changed."""


def _put(document: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """``document`` with ``value`` at ``path`` (the whole document when path is empty)."""
    if not path:
        return value
    node = document
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return document


def unknown_kinds(documents: list[Any], all_kinds: bool = False) -> list[str]:
    """A warning for each document of a kind inject does not know that holds pod
    templates (with ``all_kinds``, only for the pod specs it still cannot inject)."""
    found = []
    for index, document in enumerate(documents):
        items = document.get("items") if isinstance(document, dict) else None
        listed = isinstance(document, dict) and document.get("kind") == "List"
        for item in items if listed and isinstance(items, list) else [document]:
            sentence = unknown_kind(item, all_kinds)
            if sentence:
                found.append(f"document {index + 1} ({named(item)}): {sentence}")
    return found


def inject(
    documents: list[Any],
    config: MeshConfig,
    namespace: str | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    all_kinds: bool = False,
) -> Injected:
    """Each pod template injected exactly as the webhook would inject a pod made from it;
    every other document, and every other field, as it was."""
    out = Injected([copy.deepcopy(document) for document in documents])
    out.warnings += unknown_kinds(documents, all_kinds)
    for answer in answers(documents, config, namespace, namespace_labels, all_kinds):
        result, template = answer.result, answer.template
        place = where(answer.document, template)
        out.warnings += [f"{place}: {warning}" for warning in result.warnings]
        if result.outcome == engine.Outcome.DENY:
            out.denials.append(f"{place}: {result.reason.code}: {result.message}")
        elif result.patch:
            created = jsonpatch.apply_patch(template.as_created(), list(result.patch))
            patched = template.from_created(created)
            index = answer.document
            out.documents[index] = _put(out.documents[index], template.path, patched)
            out.changes.append((index, template.path, patched))
    return out


def diff(before: str, after: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), "before", "after"
        )
    )


def _plain(value: object) -> object:
    """A parsed annotation value as JSON has it."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def explain(
    documents: list[Any],
    config: MeshConfig,
    namespace: str | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    all_kinds: bool = False,
) -> list[dict[str, Any]]:
    """For each pod template: the decision with the fields of the webhook's log line
    (decision, reason, detail), which input decided, and every proxy.io/* annotation."""
    reports = []
    for answer in answers(documents, config, namespace, namespace_labels, all_kinds):
        result, template = answer.result, answer.template
        try:
            metadata = mapping(template.pod, "metadata", "pod")
            seen = annotation_table.describe(string_map(metadata, "annotations", "metadata"))
        except InvalidPod:
            seen = []  # the result's detail names the field
        reports.append(
            {
                "document": answer.document + 1,
                "kind": template.kind,
                "name": template.name,
                "namespace": answer.namespace,
                "decision": str(result.outcome),
                "reason": result.reason.code,
                "sentence": result.reason.sentence,
                "detail": result.message,
                "decided_by": result.rule,
                "annotations": [_seen(item) for item in seen],
                "warnings": list(result.warnings),
            }
        )
        if result.outcome == engine.Outcome.INJECT:
            decided = engine.plan(template.as_created(), answer.namespace, config, namespace_labels)
            if isinstance(decided, engine.Plan):
                reports[-1]["plan"] = decided.summary()
    return reports


def _seen(item: annotation_table.Seen) -> dict[str, Any]:
    report: dict[str, Any] = {"key": item.key, "value": item.value}
    if not item.known:
        report["unknown"] = True
        report["did_you_mean"] = item.suggestion
    elif item.error:
        report["error"] = item.error
    else:
        report["parsed"] = _plain(item.parsed)
    return report


def explanation_text(reports: list[dict[str, Any]]) -> str:
    lines = []
    for report in reports:
        lines.append(
            f"document {report['document']} ({report['kind']} {report['name']}, "
            f"namespace {report['namespace']}): {report['decision']}"
        )
        lines.append(f"  reason: {report['reason']}: {report['sentence']}")
        if report["decided_by"]:
            lines.append(f"  decided by: {report['decided_by']}")
        if report["decision"] == "deny":
            lines.append(f"  denied: {report['detail']}")
        for item in report["annotations"]:
            if item.get("unknown"):
                hint = f"; did you mean {item['did_you_mean']}?" if item["did_you_mean"] else ""
                lines.append(f"  {item['key']}: unknown, ignored{hint}")
            elif "error" in item:
                lines.append(f"  {item['key']}: {item['error']}")
            else:
                lines.append(f"  {item['key']}: {item['value']!r} -> {item['parsed']}")
        lines += [f"  warning: {warning}" for warning in report["warnings"]]
        if "plan" in report:
            lines += [f"  plan: {line}" for line in plan_lines(report["plan"])]
    return "\n".join(lines) + "\n"


def plan_lines(summary: dict[str, Any]) -> list[str]:
    """A plan's summary in sentences: each port, then the sidecar's shape."""
    lines = []
    for port in summary["ports"]:
        way = (
            f"socket {port['socket']}" + (", else TCP" if port["tcpFallback"] else "")
            if port["socket"]
            else "TCP"
        )
        hint = ", TCP-hinted" if port.get("tcpHint") else ""
        lines.append(f"port {port['port']} ({port['container']}, {port['protocol']}{hint}): {way}")
    lines.append(
        f"interception {summary['interception']}; "
        f"{'native sidecar' if summary['nativeSidecar'] else 'regular container'}; "
        f"/dev/shm from volume {summary['shmVolume']}"
        + (f" ({summary['shmSize']})" if summary["shmSize"] else "")
        + f"; {summary['probesRewritten']} probe(s) moved to the proxy"
    )
    lines.append(
        f"proxy {summary['image']}, {summary['workers']} worker(s), log level "
        f"{summary['logLevel']}" + ("; the app waits for it" if summary["holdApplication"] else "")
    )
    lines.append(_mtls_line(summary["mtls"]))
    lines.append(f"access log {summary['accessLog']}; tracing {summary['tracing']}")
    lines += [_upstream_line(u) for u in summary["upstreams"]]
    if summary["upstreams"]:
        lines.append(
            "upstreams are balanced per request across the addresses their names resolve to: "
            "a ClusterIP Service's name is one address (kube-proxy picks a pod per "
            "connection), a headless one's is every ready pod; check tells which is which"
        )
    if summary["outboundPolicy"] == "declared-only":
        lines.append(
            "outbound declared-only: anything else is refused (HTTP 502, TCP closed), "
            "counted in envoy_outbound_refused{port}"
        )
    return lines


SNIFFED = (
    f"sniffed for HTTP (at most {SNIFF_TIMEOUT.removesuffix('s')} s); anything else goes to "
    "the address called, as undeclared traffic does: give /tcp to mesh a database or a "
    "server-first protocol"
)


def _seconds(value: float) -> str:
    return "none" if not value else f"{value:g}s"


def _upstream_line(upstream: dict[str, Any]) -> str:
    """One declared upstream: protocol, transport, policy; ``sniffed`` says what that costs."""
    line = f"upstream {upstream['upstream']} ({upstream['protocol']}, {upstream['transport']})"
    limits = f"max {upstream['maxConnections']} connections"
    if upstream["protocol"] == "tcp":
        return f"{line}: {limits}; its port's TCP connections all go to it"
    policy = (
        f"timeout {_seconds(upstream['timeout'])}, per try {_seconds(upstream['perTryTimeout'])}, "
        f"{upstream['retries']} retries; {limits}, {upstream['maxPendingRequests']} pending, "
        f"{upstream['maxRequests']} requests"
    )
    if upstream["protocol"] == "sniffed":
        policy += f"; {SNIFFED}"
    return f"{line}: {policy}"


def _mtls_line(mtls: dict[str, Any]) -> str:
    if mtls["mode"] == "off":
        return "mTLS off"
    inbound = "plaintext refused" if mtls["plaintextRefused"] else "plaintext accepted"
    allowed = ", ".join(mtls["allowFrom"]) or "any identity of the trust domain"
    return (
        f"mTLS {mtls['mode']} as {mtls['identity']} (from {mtls['source']}); {inbound}; "
        f"callers allowed: {allowed}"
    )
