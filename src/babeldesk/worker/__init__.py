"""HTTP face of one engine: OpenAI-compatible API, health, readiness, metrics, drain."""
