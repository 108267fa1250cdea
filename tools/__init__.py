"""The project's own tools (not installed with embtool): gen/ writes the generated files (man pages, completions,
kernel graphs, JSON Schemas: `make docs`), fixtures/ writes the committed test fixtures (run once, in the peers'
venv), bench/ is `make bench`, experiments/ holds measurements run by hand (the bench runs fused_ops.py too),
demo.py is `make demo`."""
