"""Progress bars for the command line and the demo: a live bar on a terminal, a few whole
lines in a log file (a redirected stderr, CI)."""

from __future__ import annotations

import sys

#: seconds between two lines of a bar that does not write to a terminal
LOG_INTERVAL = 30.0


class _LogLines:
    """A stream for tqdm off a terminal: each refresh becomes one line, not a run of
    carriage returns that a log file keeps as one endless line."""

    def __init__(self, stream):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total, desc: str, *, quiet: bool = False, unit: str = "step", file=None):
    """A tqdm bar on ``file`` (stderr by default); off a terminal, a line every 30 s."""
    from tqdm.auto import tqdm

    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(
            total=total, desc=desc, unit=unit, disable=quiet, file=stream, dynamic_ncols=True
        )
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=quiet,
        file=_LogLines(stream),
        mininterval=LOG_INTERVAL,
        ncols=100,
    )
