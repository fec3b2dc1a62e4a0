"""Internal helpers of the llm_datadist package."""
