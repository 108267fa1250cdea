"""On-disk records, one module each: the module reads, writes, validates and documents its record."""
