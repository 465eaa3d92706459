"""Writing injected documents back as they came: comments, key order, quoting and flow
style kept (ruamel.yaml's round trip), what stands before the first ``---`` (a licence
header, which the round trip drops) kept verbatim, JSON written as JSON. Only the fields
the injection changed are touched: each patched template is merged into the document as
it was read, key by key and item by item."""

from __future__ import annotations

import io
import itertools
import json
import re
from typing import Any

import yaml as plain_yaml
from ruamel.yaml import YAML

_SEPARATOR = re.compile(r"^---(?:\s|$)", re.MULTILINE)
_FAST = getattr(plain_yaml, "CSafeLoader", plain_yaml.SafeLoader)


def is_json(text: str) -> bool:
    return text.lstrip().startswith(("{", "["))


def _chunks(text: str) -> list[tuple[str, str]]:
    """(separator line, the text up to the next one) for each document of ``text``; the
    first separator is empty when the text does not start with one."""
    found, separator, start = [], "", 0
    for match in _SEPARATOR.finditer(text):
        found.append((separator, text[start : match.start()]))
        line_end = text.find("\n", match.start())
        line_end = len(text) if line_end < 0 else line_end + 1
        separator, start = text[match.start() : line_end], line_end
    found.append((separator, text[start:]))
    return found


def _sequence_offset(text: str) -> int:
    """How far this file indents a block sequence's dashes under their key (0 or 2)."""
    lines = text.splitlines()
    for above, line in itertools.pairwise(lines):
        item = line.lstrip(" ")
        if item.startswith("- ") and above.rstrip().endswith(":") and "#" not in above:
            return max(0, (len(line) - len(item)) - (len(above) - len(above.lstrip(" "))))
    return 2


def _merge(into: Any, new: Any) -> Any:
    """``new`` written into ``into`` (a round-trip node) changing only what differs; the
    result to store where ``into`` was."""
    if isinstance(into, dict) and isinstance(new, dict):
        for key in [k for k in into if k not in new]:
            del into[key]
        for key, value in new.items():
            into[key] = _merge(into[key], value) if key in into else value
        return into
    if isinstance(into, list) and isinstance(new, list):
        for index, value in enumerate(new):
            if index < len(into):
                into[index] = _merge(into[index], value)
            else:
                into.append(value)
        del into[len(new) :]
        return into
    same_type = type(into) is type(new) or (isinstance(into, str) and isinstance(new, str))
    return into if same_type and into == new else new  # an equal quoted string keeps its quotes


def _at(document: Any, path: tuple[str | int, ...]) -> Any:
    node = document
    for part in path[:-1]:
        node = node[part]
    return node


def _yaml(chunk: str) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    offset = _sequence_offset(chunk)
    yaml.indent(mapping=2, sequence=offset + 2, offset=offset)
    return yaml


def _merged(node: Any, path: tuple[str | int, ...], patched: Any) -> Any:
    if not path:
        return _merge(node, patched)
    parent = _at(node, path)
    parent[path[-1]] = _merge(parent[path[-1]], patched)
    return node


def write(
    text: str, documents: list[Any], changes: list[tuple[int, tuple[str | int, ...], Any]]
) -> str:
    """The documents of ``text`` with each change (document index, template path, patched
    template) merged in; ``documents`` are the same documents already changed, written
    plainly when the input is JSON. Each document is read and written on its own, with
    its own way of indenting sequences; one that changes nothing is copied verbatim, as
    is everything that is not a document (a licence header, say)."""
    if is_json(text) and len(documents) == 1:
        return json.dumps(documents[0], indent=2, ensure_ascii=False) + "\n"
    by_document: dict[int, list[tuple[tuple[str | int, ...], Any]]] = {}
    for index, path, patched in changes:
        by_document.setdefault(index, []).append((path, patched))
    chunks = _chunks(text)
    # Which chunks are documents, by libyaml (fast); the round trip reads only those changed.
    is_document = [plain_yaml.load(chunk, Loader=_FAST) is not None for _, chunk in chunks]
    if sum(is_document) != len(documents):
        # A "---" line inside a block scalar: the content, right, without the comments.
        return plain_yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)
    out, index = [], 0
    for (separator, chunk), document in zip(chunks, is_document, strict=True):
        out.append(separator)
        if document and index in by_document:
            yaml = _yaml(chunk)
            node = yaml.load(chunk)
            for path, patched in by_document[index]:
                node = _merged(node, path, patched)
            written = io.StringIO()
            yaml.dump(node, written)
            chunk = written.getvalue()
        out.append(chunk)
        index += document
    return "".join(out)
