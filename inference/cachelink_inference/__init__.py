"""CacheLink reference inference: Gemma 3 270M in numpy with its KV cache in CacheLink blocks.

Modules: ``gguf`` (reader), ``quants`` (dequantisers), ``weights`` (cached float32 weights), ``tokenizer``,
``model`` (forward pass), ``kvcache`` (paged KV in CacheLink caches), ``engine`` (prefill, greedy decode),
``connector`` (vLLM-shaped KV connector over LLM-DataDist), ``server`` (prefill, decode, router), ``runtime``
(single-thread BLAS). Importing the package imports no numpy, so ``runtime.reproducible()`` can run first.
"""
