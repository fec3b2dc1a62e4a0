"""CacheLink: the product's command line, the local demo and the development cluster."""
