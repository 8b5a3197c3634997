"""Calls to the provider: one protocol (`base`), one selector (`selector`), one error table
(`errors`), and three implementations: `litellm_upstream` (any provider, the only module
that imports litellm), `direct` (OpenAI-compatible servers over a pooled HTTP transport,
`transport`) and `demo` (the offline demo model)."""
