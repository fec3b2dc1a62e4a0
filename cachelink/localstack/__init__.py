"""The whole product on the local development cluster, as real processes: used by ``cachelink demo``
and by the operator's end-to-end tests.

``LocalStack(DevCluster(...), root).up()`` applies the CRDs, runs one ``cachelink-agent`` per node (the
DaemonSet's pods are simulated by KWOK; the agents run here, on the nodes' loopback addresses), applies the
operator's RBAC and runs the operator under a ServiceAccount token; ``down()`` stops it all by pid.

Modules: ``stack`` (``LocalStack``), ``agents``, ``operator_runner``, ``rbac``, ``kube`` (kubectl with an
explicit kubeconfig), ``procs`` (processes recorded by pid), ``resources`` (the shipped CRDs, RBAC and
samples), ``kvcache``/``workload``/``transfer`` (a KV cache moved by attached workloads), ``watch`` and
``report``. Nothing is imported here, so the light modules stay light.
"""
