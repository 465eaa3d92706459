"""The injection engine: (pod, namespace, mesh config) -> patch, skip or denial.

Everything in this package is pure: no I/O, no clock, no globals written, and nothing
imported from the shells around it (the HTTP layer, the command line, iptables, Events,
metrics). ``core.inject`` is the entry point (``core.plan`` gives its decisions without the
patch): ``selection`` decides whether to inject, ``stages`` runs the row of stages that decide
everything else into a ``Plan``, ``render`` writes its ops. The modules the stages call
each decide one part: ``annotations`` (the one table of proxy.io/*), ``pod`` (reading the
pod), ``node_access``, ``sockets``, ``probes``, ``upstreams``, ``mtls``, ``interception``,
``sidecar``, ``lifecycle``, ``bootstrap/`` (Envoy's config), ``patch`` (JSONPatch ops),
with their vocabulary in ``names``, ``values``, ``quantity``, ``limits`` and ``config``.
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
