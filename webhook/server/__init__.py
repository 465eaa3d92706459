"""The admission server: the AdmissionReview in and out (``admission``, ``memo``), the HTTP
layer (``app``: /mutate as plain ASGI, FastAPI for the rest), serving it over TLS on uvloop
with bounded connections and a drain (``serve``, ``settings``), and what it reports
(``metrics``, ``events``, ``logs``) and re-reads (``live_config``).

May import the engine; never the node side (``webhook.node``) or the offline tools.
"""
