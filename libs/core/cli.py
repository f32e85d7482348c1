"""Command-line entry helper: user errors become one line on stderr, not a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable

from .config import ConfigError

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, KeyError)


def run_main(main: Callable[[], object], prog: str) -> None:
    """Run ``main()``; a user error prints ``<prog>: error: <message>`` and exits with status 1.

    ``ACTIONFORMER_DEBUG=1`` re-raises instead, to get the full traceback.
    """
    try:
        main()
    except USER_ERRORS as exc:
        if os.environ.get("ACTIONFORMER_DEBUG") == "1":
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(1)
