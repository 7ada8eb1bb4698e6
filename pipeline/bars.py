"""The CLI's progress bars and the log lines printed beside them.

The bars are drawn from the jobs' progress events (``pipeline.events``) by
:class:`BarRenderer`, the listener the CLI gives a job; the library itself draws none.
Every bar (a job's ``upscale`` and ``publish``, a batch's ``batch``) is made by
:func:`open_bar`, and the CLI's log handler (:class:`BarLogHandler`) writes through
``tqdm.write``, so on a terminal a stage message appears above the live bar instead of
on its line. When stderr is not a terminal (a log file, a pipe, a CI job) a bar is
written as plain lines instead of ``\\r`` redraws: one line per change, at most every
``LINE_EVERY_S``, e.g. ``upscale:  30%| 120/400 [00:38<01:20, 3.1 region/s, encoded 2/8
segments]``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

from pipeline.events import Event, SegmentsEncoded, StageStarted, UnitsDone

LINE_EVERY_S = 0.2  # plain lines at most this often (the kill tests read every change)
LINE_FORMAT = (
    "{desc}: {percentage:3.0f}%| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class LineWriter:
    """A file for tqdm that turns each ``\\r``-redrawn frame into one line (the last
    frame is not repeated when a bar closes)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._buf = ""
        self._last = ""

    def write(self, text: str) -> int:
        self._buf += text.replace("\r", "")
        return len(text)

    def flush(self) -> None:
        line, self._buf = self._buf.strip(), ""
        if line and line != self._last:
            self._last = line
            self.out.write(line + "\n")
            self.out.flush()

    def isatty(self) -> bool:
        return False


def open_bar(
    total: int,
    *,
    desc: str,
    unit: str,
    initial: int = 0,
    enabled: bool = True,
    file: IO[str] | None = None,
) -> tqdm:
    """A progress bar on stderr (or ``file``): redrawn in place on a terminal, plain
    lines otherwise; ``enabled=False`` gives a silent one (``--quiet``)."""
    out = sys.stderr if file is None else file
    common: dict[str, Any] = dict(
        total=total, initial=initial, unit=unit, desc=desc, disable=not enabled
    )
    if is_terminal(out):
        return tqdm(file=out, dynamic_ncols=True, **common)
    return tqdm(
        file=LineWriter(out),
        bar_format=LINE_FORMAT,
        mininterval=LINE_EVERY_S,
        miniters=1,
        **common,
    )


class BarLogHandler(logging.StreamHandler):
    """Log records written with ``tqdm.write``: above a live bar, never onto its line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


class BarRenderer:
    """A listener of progress events that draws one bar per stage named in ``stages``
    (a job: ``upscale`` and ``publish``; a batch: ``batch``); a video's upscale bar
    shows the segments encoded. The bar of a stage closes when the next one opens, or
    on :meth:`close`."""

    def __init__(
        self, stages: Iterable[str] = ("upscale", "publish"), file: IO[str] | None = None
    ) -> None:
        self.stages = set(stages)
        self.file = file
        self.bar: tqdm | None = None
        self.stage = self.output = ""
        self.segments = False  # the bar shows a video's encoded segments

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            if event.stage in self.stages:
                self.close()
                self.stage, self.output, self.segments = event.stage, event.output, False
                self.bar = open_bar(
                    event.total,
                    desc=event.stage,
                    unit=event.unit,
                    initial=event.done,
                    file=self.file,
                )
            elif event.output == self.output:
                self.close()  # the same job's next stage (a video's assembly)
        elif self.bar is None or event.output != self.output:
            return
        elif isinstance(event, UnitsDone) and event.stage == self.stage:
            self.bar.update(event.done - self.bar.n)
            if event.done >= event.total and not self.segments:
                self.close()  # a video's upscale bar stays for its last segments
        elif isinstance(event, SegmentsEncoded):
            self.segments = True
            self.bar.set_postfix_str(
                f"encoded {event.encoded}/{event.total} segments", refresh=False
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
