"""Kubernetes sidecar injector: an Envoy sidecar that reaches the app over a Unix socket."""

__version__ = "0.3.0"
