"""Exception types that map to the CLI's exit codes.

UsageError (exit 2): the user's input is wrong (missing file, bad flag value, impossible budget).
VerificationError (exit 3): a pruned model failed its numerical proof; nothing was written.
Ctrl-C exits 130 and a termination signal 128 + its number (:class:`Terminated`: SIGTERM 143,
SIGHUP 129), after the
cleanup of any partial output. Anything else is an internal error (exit 1).
"""

from __future__ import annotations

import signal


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


class Terminated(BaseException):
    """A termination signal (SIGTERM, SIGHUP) raised as an exception, so that ``finally`` blocks
    run (a half-written output's temporary file is removed); see :func:`raise_on_termination`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_termination() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (command-line use)."""
    def handler(signum, _frame):
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # `nohup compress ...` keeps ignoring SIGHUP
            signal.signal(sig, handler)


def failure(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit code a command reports for ``exc``."""
    if isinstance(exc, CompressorError):
        return f"error: {exc}", exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, Terminated):
        return f"terminated by {exc}", 128 + exc.signum
    return f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1
