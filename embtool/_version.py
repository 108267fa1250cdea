"""embtool's version, in a module of its own: the package face (`embtool.__version__`), the CLI, the records that
outputs carry (core/formats/record.py) and pyproject's dynamic version all read it here, so no layer has to import
the package face for it."""

__version__ = "0.1.0"
