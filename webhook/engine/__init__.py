"""The injection engine: (pod, namespace, mesh config) -> patch, skip or denial.

Everything in this package is pure: no I/O, no clock, no globals written, and nothing
imported from the shells around it (the HTTP layer, the command line, iptables, Events,
metrics). ``core.inject`` is the entry point (``core.plan`` gives its decisions without the
patch: ``_plan`` decides, ``_render`` writes the ops); the modules beside it each decide one
part:
``policy`` (inject or not, and why), ``annotations`` (the one table of proxy.io/*),
``pod`` (reading the pod), ``sockets``, ``probes``, ``upstreams``, ``sidecar``,
``lifecycle``, ``bootstrap/`` (Envoy's config), ``patch`` (JSONPatch ops), with their
vocabulary in ``names``, ``values``, ``quantity``, ``limits`` and ``config``.
"""

from webhook.engine.core import (
    InjectionResult,
    InternalError,
    Outcome,
    Plan,
    deny,
    inject,
    inject_or_deny,
    plan,
    skip,
)

__all__ = [
    "InjectionResult",
    "InternalError",
    "Outcome",
    "Plan",
    "deny",
    "inject",
    "inject_or_deny",
    "plan",
    "skip",
]
