"""ColQwen2.5 loading, batching, caching and the tiny offline model."""
