"""relay.logs: every record one line, with no exception text."""

from __future__ import annotations

import io
import logging
import sqlite3
import sys

import gevent
import pytest

from relay import logs
from relay.errors import ErrorCode, InvalidRequest

SECRET = "my secret prompt\nFAKE 2020-01-01 ERROR forged record\r\n"


def _logged(emit: object) -> str:
    """What a handler with relay's filter writes for the records `emit(logger)` makes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logs.install(handler)
    logger = logging.getLogger("relay.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        emit(logger)  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    return stream.getvalue()


def _raise_chain() -> None:
    try:
        raise ValueError(SECRET)
    except ValueError as exc:
        raise InvalidRequest(SECRET, code=ErrorCode.EMPTY_PROMPT) from exc


def test_a_traceback_is_one_line_with_types_codes_and_frames_but_no_messages() -> None:
    def emit(logger: logging.Logger) -> None:
        try:
            _raise_chain()
        except InvalidRequest:
            logger.exception("the request failed")

    text = _logged(emit)
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "secret" not in text and "forged" not in text
    assert text.startswith("ERROR relay.test_logs: the request failed | Traceback: ValueError at ")
    assert "tests/test_logs.py:" in text and "_raise_chain" in text
    assert " then relay.errors.InvalidRequest [empty_prompt] at " in text


def test_exceptions_among_the_arguments_lose_their_text() -> None:
    error = ConnectionRefusedError(111, SECRET)
    text = _logged(lambda logger: logger.warning("publish failed: %s (%r)", error, error))
    assert text == (
        "WARNING relay.test_logs: publish failed: ConnectionRefusedError [ECONNREFUSED] "
        "('ConnectionRefusedError [ECONNREFUSED]')\n"
    )


def test_a_sqlite_error_keeps_its_error_name() -> None:
    connection = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as caught:
        connection.execute(f"SELECT * FROM '{SECRET}'")
    text = _logged(lambda logger: logger.error("query failed: %s", caught.value))
    assert text == "ERROR relay.test_logs: query failed: sqlite3.OperationalError [SQLITE_ERROR]\n"


@pytest.mark.parametrize("line_break", ["\n", "\r", "\r\n", "\x0b", "\x85", "\u2028", "\x1b[2J"])
def test_line_breaks_and_control_characters_in_messages_are_escaped(line_break: str) -> None:
    text = _logged(lambda logger: logger.info("ticket %s", f"a{line_break}b"))
    assert text.count("\n") == 1 and len(text[:-1].splitlines()) == 1
    assert "\x1b" not in text and text.startswith("INFO relay.test_logs: ticket a\\")


def test_a_record_is_rewritten_once_however_many_handlers_it_passes() -> None:
    record = logging.LogRecord("relay", logging.ERROR, __file__, 1, "x %s", ("a\nb",),
                               sys.exc_info())
    for _ in range(2):
        logs.OneLine().filter(record)
    assert record.getMessage() == "x a\\nb"


def test_a_greenlet_that_dies_is_reported_as_one_record(caplog: pytest.LogCaptureFixture) -> None:
    def doomed() -> None:
        raise ValueError(SECRET)

    hub = gevent.get_hub()
    logs.install(caplog.handler)
    logs.report_greenlet_errors(hub)
    try:
        gevent.spawn(doomed).join()
    finally:
        del hub.print_exception  # gevent's own again
    [record] = [r for r in caplog.records if "died" in r.getMessage()]
    text = caplog.handler.format(record)
    assert "\n" not in text and "secret" not in text and "forged" not in text
    assert " died | Traceback: ValueError at " in text and ".<locals>.doomed died" in text


def test_gunicorns_error_log_is_one_line_per_record(capsys: pytest.CaptureFixture[str]) -> None:
    from gunicorn.config import Config

    from relay.gunicorn_conf import OneLineLogger, logger_class

    assert logger_class is OneLineLogger
    logger = OneLineLogger(Config())  # the error log on stderr, as relay's config has it
    try:
        _raise_chain()
    except InvalidRequest:
        logger.exception("Error handling request %s", "/new")
    logged = capsys.readouterr().err
    assert logged.count("\n") == 1 and "secret" not in logged and "forged" not in logged
    assert "[ERROR] Error handling request /new | Traceback: ValueError at " in logged
