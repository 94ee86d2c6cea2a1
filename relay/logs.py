"""Log records as one line each, with no exception text: installed on relay's log handler and on
gunicorn's error log.

An exception's message is data (SQLAlchemy's carries the statement's parameters, an upstream's
may quote the prompt, a connection error the URL), so records keep an exception's type, its
codes (errno, SQLSTATE, SQLite's error name, relay's error code) and the frames it passed
through, never its message. Line breaks in what remains are escaped, so that every record is
one line that no text can forge another record into. Must not import the app: gunicorn's master
imports it.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from enum import Enum
from typing import Any

# Control characters (str.splitlines() breaks on several, a terminal obeys others) but the tab.
_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, 0x85] if code != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class OneLine(logging.Filter):
    """Rewrites each record it passes into one safe line: its message with exceptions among the
    arguments replaced by `describe`, then `| Traceback: <exception>` for one with exc_info."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "relay_one_line", False):
            return True  # already rewritten (a record may pass several handlers)
        args = record.args
        if isinstance(args, tuple):
            args = tuple(_safe(arg) for arg in args)
        elif isinstance(args, dict):
            args = {key: _safe(value) for key, value in args.items()}
        try:
            message = str(record.msg) % args if args else str(record.msg)
        except (TypeError, ValueError, KeyError):
            message = f"{record.msg} {args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            message += " | Traceback: " + describe(record.exc_info[1], frames=True)
        if record.stack_info:
            message += " | " + record.stack_info
        record.msg, record.args = message.translate(_ESCAPES), None
        record.exc_info = record.exc_text = record.stack_info = None
        record.relay_one_line = True
        return True


def install(handler: logging.Handler) -> None:
    """Make `handler` write every record as one safe line."""
    if not any(isinstance(each, OneLine) for each in handler.filters):
        handler.addFilter(OneLine())


def report_greenlet_errors(hub: Any) -> None:
    """Have gevent's `hub` report a greenlet that died of an exception through relay's log,
    rather than print its traceback (text and all) to stderr."""

    def report(context: Any, kind: Any, value: Any, tb: Any) -> None:
        name = getattr(getattr(context, "_run", None), "__qualname__", type(context).__name__)
        logging.getLogger("relay").error("greenlet %s died", name, exc_info=(kind, value, tb))

    hub.print_exception = report


def describe(exc: BaseException, *, frames: bool = False) -> str:
    """An exception without its message: type and codes, with its chain (and, if `frames`, the
    frames each went through, innermost last)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts = []
    for each in reversed(chain):  # as Python prints a chain: the first cause first
        text = _name(each) + _codes(each)
        if frames and each.__traceback__ is not None:
            stack = traceback.extract_tb(each.__traceback__)
            text += " at " + " > ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in stack)
        parts.append(text)
    return " then ".join(parts)


def _safe(arg: Any) -> Any:
    return describe(arg) if isinstance(arg, BaseException) else arg


def _name(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _codes(exc: BaseException) -> str:
    codes = []
    if isinstance(exc, OSError) and exc.errno is not None:
        codes.append(errno.errorcode.get(exc.errno, str(exc.errno)))
    # The database's own codes, and relay's (an ErrorCode) or a number: never a code some other
    # party chose, which is data again.
    for attribute in ("sqlstate", "sqlite_errorname"):
        value = getattr(exc, attribute, None)
        if isinstance(value, str) and len(value) <= 40:
            codes.append(value)
    code = getattr(exc, "code", None)
    if isinstance(code, Enum | int) and not isinstance(code, bool):
        codes.append(str(code))
    return f" [{', '.join(codes)}]" if codes else ""


def _short(filename: str) -> str:
    """A source path from its package on (`relay/app.py`, `flask/app.py`, `socket.py`)."""
    for root in _ROOTS:
        if filename.startswith(root):
            return filename[len(root):]
    return "/".join(filename.split(os.sep)[-2:])


# Where packages are imported from (relay's folder first: an editable install is not on
# sys.path), longest first.
_ROOTS = sorted(
    {os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep}
    | {os.path.abspath(entry) + os.sep for entry in sys.path if os.path.isabs(entry)},
    key=len, reverse=True,
)
