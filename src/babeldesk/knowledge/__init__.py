"""The shop's knowledge: KB files, the intent matcher, embeddings, the document index and
retrieval (DESIGN: may import core only)."""
