"""LLM-DataDist v2 (cache-manager) API types."""
