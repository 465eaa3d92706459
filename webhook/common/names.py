"""Names the signer and ``check`` both rely on: the API versions of pod certificates, the
signer's Lease and its CA Secret. Changing one breaks running installations."""

CERTIFICATES_VERSIONS = ("v1", "v1beta1", "v1alpha1")
"""certificates.k8s.io versions with pod certificates, preferred first."""
SIGNER_LEASE = "proxy-signer"
MESH_CA_SECRET = "proxy-mesh-ca"
"""The signer's Lease and CA Secret, in its namespace (proxy-system)."""
