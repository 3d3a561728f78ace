"""What `crowdclust run` prints of Prefect's log: the lines, not the tracebacks (unless `--debug`).

Prefect logs a failed task and flow run with its traceback, to the flow run's log (where the UI
shows it) and to the console. On the console a failed wait printed about 300 lines, two full
tracebacks among them, above the command's one `error:` line that says what to do. The console
now shows each log line without its traceback; the flow run's log keeps it whole.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _WithoutTraceback(logging.Formatter):
    """Formats a record as `inner` does, leaving out its exception and stack.

    The record is restored afterwards: the handlers that see it next (the API's) still get the
    traceback. A formatter caches `exc_text` on the record only when it formats an exception, which
    this one never asks `inner` to do.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


@contextlib.contextmanager
def console_without_tracebacks() -> Iterator[None]:
    """Prefect's console handlers (on the root logger) print no tracebacks in the block."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    before = [handler.formatter for handler in handlers]
    for handler, formatter in zip(handlers, before, strict=True):
        handler.setFormatter(_WithoutTraceback(formatter or logging.Formatter()))
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, before, strict=True):
            handler.setFormatter(formatter)
