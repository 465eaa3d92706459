"""``proxy-injector signer``: the CA that answers PodCertificateRequests for the mesh's
signer name, so pods get SPIFFE identities with no control plane and no third-party
issuer. The decisions (``review``, ``issue``, ``authority``) are pure; ``controller``
talks to the API."""
