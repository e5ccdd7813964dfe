"""Tests for gateway.logs: one JSON object per line, with the structured ``extra`` fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.logs import JsonFormatter, setup_logging


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing through a JsonFormatter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.logs.json")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, buffer
    log.handlers.clear()
    log.propagate = True


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, buffer = logger

    log.info("door %s opened", "front")
    log.warning("second\nline with a newline")

    first, second = lines(buffer)
    assert set(first) == {"ts", "level", "logger", "msg"}
    assert first["level"] == "info"
    assert first["logger"] == "tests.logs.json"
    assert first["msg"] == "door front opened"
    assert datetime.fromisoformat(first["ts"]).utcoffset() is not None
    assert first["ts"].endswith("+00:00")
    assert len(first["ts"].split("T")[1].split("+")[0]) == len("12:00:00.000")
    assert second["level"] == "warning"
    assert second["msg"] == "second\nline with a newline"


def test_extra_fields_are_structured(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, buffer = logger

    log.info("granted", extra={"door": "front", "seq": 7, "tags": ["a", "b"], "path": Path("/x")})

    [line] = lines(buffer)
    assert line["door"] == "front"
    assert line["seq"] == 7
    assert line["tags"] == ["a", "b"]
    assert line["path"] == "/x"  # not JSON by itself: written as str
    assert "args" not in line
    assert "levelno" not in line
    assert "exc_text" not in line


def test_non_ascii_is_kept(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, buffer = logger

    log.info("porta d'ingresso: …E5F6 è aperta")

    assert "…E5F6 è aperta" in buffer.getvalue()
    assert lines(buffer)[0]["msg"] == "porta d'ingresso: …E5F6 è aperta"


def test_exceptions_are_included(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, buffer = logger

    try:
        raise KeyError("no such door")
    except KeyError:
        log.exception("lookup failed")

    [line] = lines(buffer)
    assert line["level"] == "error"
    assert line["msg"] == "lookup failed"
    assert "Traceback" in line["exc"]
    assert "KeyError: 'no such door'" in line["exc"]


def test_a_line_formatted_twice_is_the_same(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, buffer = logger
    plain = io.StringIO()
    other = logging.StreamHandler(plain)
    other.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(other)

    log.info("hello %d", 1)

    [line] = lines(buffer)
    assert set(line) == {"ts", "level", "logger", "msg"}  # asctime/message set by the other one
    log.removeHandler(other)


def test_extra_fields_do_not_overwrite_the_line(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, buffer = logger

    log.warning("relay stuck", extra={"level": "debug", "logger": "x", "ts": "yesterday"})

    [line] = lines(buffer)
    assert line["level"] == "warning"
    assert line["logger"] == "tests.logs.json"
    assert line["ts"] != "yesterday"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger and aiohttp.access back as they were."""
    root = logging.getLogger()
    access = logging.getLogger("aiohttp.access")
    saved = (root.handlers[:], root.level, access.level)
    yield
    root.handlers[:], level, access_level = saved
    root.setLevel(level)
    access.setLevel(access_level)


@pytest.mark.usefixtures("root_logging")
def test_setup_logging_json(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning", "json")

    logging.getLogger("gateway.test").info("hidden")
    logging.getLogger("gateway.test").warning("shown", extra={"door": "lobby"})

    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    line = json.loads(out[0])
    assert line["msg"] == "shown"
    assert line["door"] == "lobby"
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("aiohttp.access").level == logging.WARNING


@pytest.mark.usefixtures("root_logging")
def test_setup_logging_text(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "text")

    logging.getLogger("gateway.test").debug("plain words")

    out = capsys.readouterr().out
    assert "DEBUG" in out
    assert "gateway.test: plain words" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
