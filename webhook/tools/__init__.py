"""The offline tools: ``inject`` and ``explain`` on manifests (``offline``, with
``workloads`` finding the pod templates and ``roundtrip`` writing files back as they came)
and ``check`` on a cluster.

May import the engine (and, for ``check``, the kubernetes client); never the admission
server or the node side.
"""
