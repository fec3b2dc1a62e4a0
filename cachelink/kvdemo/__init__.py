"""A KV cache moved between attached workloads, as the demo and the tests show it: the cache's shape and
contents (``kvcache``), a stand-in inference engine (``workload``), the write-then-pull run (``transfer``),
following a CacheLink to Ready (``watch``) and the summary (``report``). Nothing is imported here.
"""
