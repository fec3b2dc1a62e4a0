"""A KV cache moved between attached workloads: the cache's shape and contents (``kvcache``) and a stand-in
inference engine (``workload``) that the demo runs in its prompt and decode pods, so both ship in the
image. The demo's driving side (pods, transfer, watch, report) is in ``cachelink_dev.demo``. Nothing is
imported here.
"""
