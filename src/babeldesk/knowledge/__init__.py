"""The shop's knowledge: embeddings, the document index and retrieval (DESIGN: may import core only)."""
