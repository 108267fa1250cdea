"""embtool: shrink transformer text-embedding models and run them, without PyTorch."""

__version__ = "0.1.0"
