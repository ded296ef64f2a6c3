"""Model loading, tokenization, the batch scheduler and its backends."""
