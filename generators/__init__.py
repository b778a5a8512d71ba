"""Teacher backends (vLLM, transformers, OpenAI-compatible HTTP) and task recipes (prompting + parsing)."""
