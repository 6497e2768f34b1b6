"""Exception types that map to the CLI's exit codes.

UsageError (exit 2): the user's input is wrong (missing file, bad flag value, impossible budget).
VerificationError (exit 3): a pruned model failed its numerical proof; nothing was written.
Anything else is an internal error (exit 1).
"""

from __future__ import annotations


class CompressorError(Exception):
    """Base class for errors reported to the user as one line."""

    exit_code = 1


class UsageError(CompressorError):
    """Bad input: a missing/corrupt file, an invalid option, an impossible request."""

    exit_code = 2


class ModelError(UsageError):
    """The model file cannot be loaded or is not a valid ONNX graph."""


class VerificationError(CompressorError):
    """The pruned model does not reproduce the masked original."""

    exit_code = 3

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report
