"""Command-line entry helper: every failure becomes one line on stderr and a non-zero exit status,
not a traceback (``--debug`` on the command line, or ``ACTIONFORMER_DEBUG=1``, shows it)."""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, List, Optional

__all__ = ["RunError", "Interrupted", "run_main", "os_error_message"]

_OS_REASONS = {errno.ENOSPC: "no space left on device", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
               errno.EDQUOT: "disk quota exceeded", errno.ENOENT: "no such file or directory"}


class RunError(RuntimeError):
    """A failure whose message says everything the user needs (printed as it is)."""


class Interrupted(Exception):
    """Ctrl-C, with a message saying where the run stopped and how to go on."""


def os_error_message(exc: OSError, path: Optional[str] = None) -> str:
    """``<path>: no space left on device`` / ``permission denied`` / the system's reason."""
    reason = _OS_REASONS.get(exc.errno, exc.strerror or str(exc))
    where = path or exc.filename
    return f"{where}: {reason}" if where else reason


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_error_message(exc)
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    text = str(exc).strip()
    if "Original Traceback" in text:     # re-raised from a DataLoader worker: keep the original message
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(exc, (RunError, ValueError, FileNotFoundError)) or type(exc).__name__ == "ConfigError":
        return text
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def debug_requested(argv: Optional[List[str]] = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("ACTIONFORMER_DEBUG") == "1"


def run_main(main: Callable[[], object], prog: str) -> None:
    """Run ``main()``: a failure prints ``<prog>: error: <message>`` (one line, exit status 1),
    Ctrl-C prints ``<prog>: <where it stopped>`` (exit status 130). ``main`` may return an int
    exit status. With ``--debug`` / ``ACTIONFORMER_DEBUG=1`` exceptions propagate (traceback)."""
    debug = debug_requested()
    try:
        status = main()
    except Interrupted as exc:
        if debug:
            raise
        print(f"{prog}: {exc}", file=sys.stderr, flush=True)
        sys.exit(130)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - every failure: one line
        if debug:
            raise
        hint = "" if isinstance(exc, (RunError, ValueError, OSError, KeyError)) \
            or type(exc).__name__ == "ConfigError" else " (run with --debug for the traceback)"
        print(f"{prog}: error: {_message(exc)}{hint}", file=sys.stderr, flush=True)
        sys.exit(1)
    if isinstance(status, int) and not isinstance(status, bool) and status:
        sys.exit(status)
