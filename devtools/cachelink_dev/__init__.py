"""CacheLink's development tools (the ``cachelink-dev`` distribution, not part of the runtime wheel or image).

``devcluster``: a Kubernetes control plane built from source; ``realnodes``: kubelet + containerd nodes, the
images; ``release``: the chart and the CRDs as the tools install them; ``demo``: the cluster demo;
``procs``: child processes.
"""
