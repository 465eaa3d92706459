"""``Json``: a JSON object as Python holds it (a pod, a container, an Envoy config part).
One name for it across the engine."""

from typing import Any

Json = dict[str, Any]
