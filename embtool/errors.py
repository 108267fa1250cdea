"""The named exceptions of embtool's API (`embtool.errors.InputError`, ...): each is a clear, user-facing failure
with the exit code the CLI gives it (1; BadUsage 2; FidelityError 3, a failed --min-* gate)."""

from embtool.core.errors import (BadUsage, ClusterError, CorruptFile, EmbtoolError, FidelityError, InputError, ModelNotFound,  # noqa: F401
                                 OutputExists, UnsafeModel, Unsupported)

__all__ = ["BadUsage", "ClusterError", "CorruptFile", "EmbtoolError", "FidelityError", "InputError", "ModelNotFound", "OutputExists",
           "UnsafeModel", "Unsupported"]
