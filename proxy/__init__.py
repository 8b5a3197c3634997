"""llm-cache-proxy: an OpenAI-compatible caching and rate-limiting proxy for LLM APIs."""

__version__ = "0.1.0"
