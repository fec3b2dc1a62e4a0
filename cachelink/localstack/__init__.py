"""Tools the demo, the tests and the benchmarks share to drive the product on a cluster.

Modules: ``chart`` (the Helm release), ``kube`` (kubectl with an explicit kubeconfig), ``procs`` (processes
recorded by pid, waits, ports), ``resources`` (the shipped CRDs and samples), ``kvcache``/``workload``/
``transfer`` (a KV cache moved by attached workloads), ``watch`` and ``report``. The product itself runs
on real nodes (:mod:`cachelink.realnodes`). Nothing is imported here, so the light modules stay light.
"""
