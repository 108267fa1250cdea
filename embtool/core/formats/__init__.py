"""embtool's on-disk records: one module per record. Each module reads, writes, validates and documents its record
(the format description is that module's docstring); nothing else spells its keys."""
