"""Running models with onnxruntime: the graph builder and the encoder."""
