"""CacheLink's own extensions, beside the LLM-DataDist-compatible API.

Nothing here is needed by code written against LLM-DataDist. Each module has one job, and importing this
package loads none of them:

* ``options``: the ``init`` options (CacheLink's ``cachelink.*`` keys, completion and validation); pure
  Python, it loads no native code, so the operator may import it.
* ``hosting``: what the node agent and attached workloads need from a live instance (links, pool files,
  cache layout, counters) and several instances in one process.
* ``pool_sweep``: removing pool files whose process died.
* ``rank_table``: parsing communication-domain rank tables.
"""
