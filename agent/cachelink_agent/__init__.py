"""CacheLink node agent: owns a node's LLMDataDist instances; serves the operator and the workloads.

Public entry points: ``cachelink_agent.client.AgentClient`` (operator side), ``cachelink_agent.attach.attach``
(workload side), ``cachelink_agent.models`` (the API's pydantic models). Importing the package imports
none of them, so each side pays only for what it uses.
"""

__version__ = "0.1.0"
