"""Console records of a run: ``train.log`` (what the console shows, without progress-bar redraws)
and a progress display that is a tqdm bar on a terminal and plain periodic lines elsewhere
(nohup, batch schedulers, pipes)."""
from __future__ import annotations

import io
import sys
from typing import Optional, TextIO

from tqdm import tqdm

__all__ = ["RunLog", "Progress", "log_only", "console_is_terminal"]

_active: Optional["RunLog"] = None


class _Tee(io.TextIOBase):
    """Writes to a console stream and to the run's log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


class RunLog:
    """Copy everything printed to stdout / stderr into ``path`` (appending) until :meth:`close`.

    Progress bars bypass the copy (they draw on the raw console stream); :func:`log_only`
    records a plain line in the file without printing it.
    """

    def __init__(self, path: str) -> None:
        global _active
        self.file = open(path, "a", encoding="utf8", buffering=1)
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(self.stdout, self.file), _Tee(self.stderr, self.file)
        _active = self

    def close(self) -> None:
        global _active
        if _active is self:
            sys.stdout, sys.stderr = self.stdout, self.stderr
            _active = None
        self.file.close()


def log_only(line: str) -> None:
    """Append ``line`` to the active run log (no-op without one)."""
    if _active is not None:
        _active.file.write(line + "\n")


def _raw(stream: TextIO) -> TextIO:
    return stream.stream if isinstance(stream, _Tee) else stream


def console_is_terminal() -> bool:
    stream = _raw(sys.stderr)
    return hasattr(stream, "isatty") and stream.isatty()


class Progress:
    """Progress over ``total`` iterations.

    On a terminal: a tqdm bar (redraws go to the terminal only) and each :meth:`line` is written
    to the run log. Elsewhere: no bar; each :meth:`line` is printed as a plain line (and logged).
    ``enabled=False`` (ranks other than 0) shows and logs nothing.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar = None
        if enabled and console_is_terminal():
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=True, file=_raw(sys.stderr))

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def line(self, text: str) -> None:
        """A periodic status ``text`` (bar postfix on a terminal, a printed line elsewhere)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            log_only(f"{self.desc} {text}")
        else:
            print(f"{self.desc} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
