"""babeldesk: a multilingual customer-service assistant and the LLM serving stack under it."""

__version__ = "0.1.0"
