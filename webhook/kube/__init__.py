"""The Kubernetes API from asyncio: calls bounded as a whole, and resumable list+watch.
Shared by what runs beside the cluster's control plane (the CNI agent, the signer)."""
