"""Named exceptions of the core. The CLI turns each into `Error: ...` and exit 1 (3 for a failed gate)."""


class EmbtoolError(Exception):
    """Base class: a clear, user-facing failure (exit 1)."""

    exit_code = 1


class ModelNotFound(EmbtoolError):
    pass


class UnsafeModel(EmbtoolError):
    """Pickle weights, external data escaping the folder, ..."""


class CorruptFile(EmbtoolError):
    """A file that is not what it claims to be (truncated, lying header, bad JSON)."""


class Unsupported(EmbtoolError):
    """An architecture, tokenizer type or option the tool does not handle."""


class InputError(EmbtoolError):
    """Bad user input: texts, corpora, flag values discovered at run time."""


class BadUsage(EmbtoolError):
    """A usage error found past option parsing (e.g. `-o -` for a model, no selection for trim-vocab): exit 2."""

    exit_code = 2


class OutputExists(EmbtoolError):
    pass


class FidelityError(EmbtoolError):
    """A --min-cosine / --min-cosine-min / --min-recall gate failed: exit 3, nothing written."""

    exit_code = 3


class ClusterError(EmbtoolError):
    """Ray could not be started or reached, or failed while working (a raylet or worker died, an object was lost)."""
