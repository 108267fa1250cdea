"""The shared I/O core: the only place that opens model files."""
