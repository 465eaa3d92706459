"""The ``Cluster`` of certs/manager.py on the real API, through the kubernetes client."""

from __future__ import annotations

import base64

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from certs.manager import Conflict, Stored


class KubeCluster:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        if api_client is None:
            config.load_incluster_config()
            api_client = client.ApiClient()
        self.core = client.CoreV1Api(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)

    def read_secret(self, namespace: str, name: str) -> Stored | None:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return Stored(data, secret.metadata.resource_version)

    def _body(self, name: str, data: dict[str, bytes], version: str | None) -> client.V1Secret:
        return client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, resource_version=version),
            type="kubernetes.io/tls",
            data={k: base64.b64encode(v).decode() for k, v in data.items()},
        )

    def create_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        try:
            self.core.create_namespaced_secret(namespace, self._body(name, data, None))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(name) from None
            raise

    def replace_secret(
        self, namespace: str, name: str, data: dict[str, bytes], resource_version: str
    ) -> None:
        try:
            self.core.replace_namespaced_secret(
                name, namespace, self._body(name, data, resource_version)
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(name) from None
            raise

    def set_ca_bundle(self, webhook_configuration: str, bundle: bytes) -> None:
        current = self.admission.read_mutating_webhook_configuration(webhook_configuration)
        encoded = base64.b64encode(bundle).decode()
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": encoded}
            for i, _ in enumerate(current.webhooks or [])
        ]
        if patch:
            self.admission.patch_mutating_webhook_configuration(webhook_configuration, patch)
