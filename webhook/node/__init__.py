"""The node side: everything that runs on a node or in a pod's network namespace.

``init-iptables`` (proxy-init) and ``validate-interception`` (proxy-validate) run in the pod;
the CNI agent (``cni agent``, the proxy-injector-cni DaemonSet) and its static relay
(``relay.c``) run on the node. What decides stays pure (``interception``, ``flags``,
``plugin``, ``pods``); the rest are thin shells around it. May import the engine's pure
modules (names, values, config); never the admission server.
"""
