"""One logging set-up for the ``dff`` logger tree (``dff.train``, ``dff.test``, ...).

The entry scripts call :func:`setup_logging` once for the console; the trainer and the tester call it
again for their log files (``train.log``, ``test.log``) and undo it when they are done
(:meth:`LogSetup.close`, or ``with``). Console lines are the bare message, file lines are prefixed
with the time (``%(asctime)s %(message)s``). While a progress bar is shown, :func:`progress_logging`
writes the console lines above it (tqdm's ``logging_redirect_tqdm``) rather than through it.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["LOGGER", "FILE_FORMAT", "LogSetup", "setup_logging", "progress_logging"]

LOGGER = "dff"
FILE_FORMAT = "%(asctime)s %(message)s"
_CONSOLE = "_dff_console"  # marks the console handler setup_logging installs (one at a time)


class LogSetup:
    """The handlers one :func:`setup_logging` call added; :meth:`close` removes and closes them and puts
    back the console handler they replaced."""

    def __init__(self, logger: logging.Logger, added: list[logging.Handler], replaced: list[logging.Handler]) -> None:
        self.logger, self.added, self.replaced = logger, added, replaced

    def close(self) -> None:
        for h in self.added:
            self.logger.removeHandler(h)
            h.close()
        for h in self.replaced:
            self.logger.addHandler(h)
        self.added, self.replaced = [], []

    def __enter__(self) -> LogSetup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def setup_logging(log_file: str | None = None, *, console: bool = True, level: int = logging.INFO,
                  append: bool = True, console_level: int = logging.NOTSET, console_prefix: str = "") -> LogSetup:
    """Send the ``dff`` loggers' records at ``level`` and above to ``log_file`` and/or the console (stderr).

    Args:
        log_file: a file to write (``%(asctime)s %(message)s`` lines), appended to unless ``append`` is False.
        console: install the console handler (``console_prefix`` + the message, records at
            ``console_level`` and above), replacing the one an earlier call installed until this set-up is
            closed; False leaves the console as it is.
    """
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    logger.propagate = False
    added: list[logging.Handler] = []
    replaced: list[logging.Handler] = []
    if log_file is not None:
        fh = logging.FileHandler(log_file, mode="a" if append else "w")
        fh.setFormatter(logging.Formatter(FILE_FORMAT))
        added.append(fh)
    if console:
        replaced = [h for h in logger.handlers if getattr(h, _CONSOLE, False)]
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(logging.Formatter(console_prefix.replace("%", "%%") + "%(message)s"))
        ch.setLevel(console_level)
        setattr(ch, _CONSOLE, True)
        added.append(ch)
    for h in replaced:
        logger.removeHandler(h)
    for h in added:
        logger.addHandler(h)
    return LogSetup(logger, added, replaced)


@contextlib.contextmanager
def progress_logging(enabled: bool = True) -> Iterator[None]:
    """While a tqdm bar is shown (``enabled``): the ``dff`` console lines are written above the bar.

    Nothing changes where no console handler is installed (a library caller's log stays silent)."""
    logger = logging.getLogger(LOGGER)
    console = [h for h in logger.handlers if getattr(h, _CONSOLE, False)
               and getattr(h, "stream", None) in (sys.stdout, sys.stderr)]
    if not enabled or not console:
        yield
        return
    before = set(logger.handlers)
    with logging_redirect_tqdm([logger]):
        for h in logger.handlers:
            if h not in before:  # tqdm's handler: the console's level too (tqdm copies format and filters)
                h.setLevel(console[0].level)
        yield
