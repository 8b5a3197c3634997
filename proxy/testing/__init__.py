"""Test doubles shipped with the package: the fake OpenAI-compatible provider
(`fake_provider`) and an httpx transport for direct upstream calls (`transports`).
Imported by the tests and the benchmark, never by the server."""
