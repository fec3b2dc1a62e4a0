"""CacheLink's Kubernetes operator: reconciles CacheLink and CacheLinkPolicy into node-agent calls.

Run it with ``cachelink-operator`` (``cachelink_operator.__main__``). The pure parts (``policy``,
``desired``, ``diff``, ``status``) have no Kubernetes or network dependency and are unit-tested alone.
"""

__version__ = "0.1.0"
