"""CacheLink: the product's command line and the engine-only demo (the development tools, the local
cluster and the cluster demo, are the separate ``cachelink_dev`` package in ``devtools/``)."""
