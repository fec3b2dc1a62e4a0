"""The cluster demo (``cachelink demo``): the sample objects and entry point (``cluster``), the real-node run
(``real``), the model stage (``inference``), the workload pods (``pods``), the write-then-pull run
(``transfer``), following a CacheLink to Ready (``watch``) and the summary (``report``). Nothing is
imported here.
"""
