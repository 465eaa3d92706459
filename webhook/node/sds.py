"""The proxy's SDS files, written by the init container (proxy-init, or proxy-validate in
cni mode) from its own args before the proxy starts.

What Envoy trusts must not come from anything that can change once the pod exists: args
cannot, while annotations (which the downward API once carried here) can be patched by
anyone allowed to patch the pod. The volume is mounted read-only in the proxy, and in no
app container.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}\.json")


def parse(items: list[str]) -> dict[str, str]:
    """``--sds-file NAME=JSON`` values as {name: document}; ValueError naming the flag."""
    files: dict[str, str] = {}
    for item in items:
        name, sep, document = item.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"--sds-file {item[:60]!r}: expected NAME.json=DOCUMENT")
        try:
            json.loads(document)
        except ValueError:
            raise ValueError(f"--sds-file {name}: the document is not JSON") from None
        if name in files:
            raise ValueError(f"--sds-file {name}: given twice")
        files[name] = document
    return files


def write(directory: Path, files: dict[str, str]) -> None:
    """Each file whole or not at all (a rename), readable by the proxy's UID."""
    for name, document in files.items():
        temporary = directory / f".{name}.tmp"
        temporary.write_text(document)
        temporary.chmod(0o644)
        os.rename(temporary, directory / name)
