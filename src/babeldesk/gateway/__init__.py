"""Customer-facing HTTP app: support API, OpenAI passthrough, chat page."""
