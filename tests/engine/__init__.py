"""The pure engine's own tests: pod + mesh config in, patch, plan or denial out; real Envoy
validates the bootstraps, kubernetes-validate the pods; no server, no network."""
