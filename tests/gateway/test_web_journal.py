"""``GET /api/events/export``: the journal's CSV over real HTTP, streamed, behind the admin guard."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import aiosqlite
import pytest

from gateway import journal as journal_module
from gateway.app import Gateway
from gateway.journal import CSV_COLUMNS
from gateway.model import EventType
from tests.conftest import GatewayFactory
from tests.gateway.test_journal import grant

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class Export:
    """A started gateway and an HTTP session for its export route."""

    gw: Gateway
    session: aiohttp.ClientSession
    url: str


@pytest.fixture
async def export(start_gateway: GatewayFactory) -> AsyncIterator[Export]:
    gw = await start_gateway()
    async with aiohttp.ClientSession() as session:
        yield Export(gw, session, f"http://127.0.0.1:{gw.web.port}/api/events/export")


async def fill(gw: Gateway, count: int, *, step: timedelta = timedelta(minutes=30)) -> list[str]:
    """``count`` decisions from T0 on, every ``step``, straight into the journal; their ids."""
    ids = []
    for i in range(count):
        event = grant(T0 + i * step, door=("front", "lobby")[i % 2], granted=i % 3 != 0)
        assert gw.journal.append(event)
        ids.append(event.id)
        if i % 5000 == 4999:
            await gw.journal.flush()  # within the journal's queue bound
    await gw.journal.flush()
    return ids


def rows(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return list(reader)


async def test_the_export_is_csv_streamed_in_chunks(export: Export) -> None:
    ids = await fill(export.gw, 12_000)  # 250 days of decisions, every 30 minutes
    params = {"from": "2025-01-01", "to": "2026-01-01"}
    async with export.session.get(export.url, params=params) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        assert response.headers["Content-Disposition"] == (
            'attachment; filename="events-2025-01-01-2026-01-01.csv"'
        )
        assert response.headers["Cache-Control"] == "no-store"
        body = bytearray()
        http_chunks = 0
        async for data, end_of_chunk in response.content.iter_chunks():
            body += data
            http_chunks += end_of_chunk
    assert http_chunks > 12  # the header, then one chunk per page of 1000 rows at least
    parsed = rows(body.decode("utf-8"))
    assert [r["event_id"] for r in parsed] == ids
    assert parsed[0]["user_name"] == "Ada Lovelace"  # the demo site's names
    assert parsed[0]["local_time"] == "2025-03-01T10:00:00+01:00"  # the site is in Rome


async def test_a_client_that_leaves_half_way_ends_the_export(
    export: Export, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(export.gw, 6_000)
    closed = asyncio.Event()
    open_reader = journal_module.open_reader

    async def tracked(path: Path) -> aiosqlite.Connection:
        conn = await open_reader(path)
        close = conn.close

        async def close_and_tell() -> None:
            await close()
            closed.set()

        monkeypatch.setattr(conn, "close", close_and_tell)
        return conn

    monkeypatch.setattr(journal_module, "open_reader", tracked)
    async with export.session.get(
        export.url, params={"from": "2025-01-01", "to": "2026-01-01"}
    ) as response:
        assert response.status == 200
        await response.content.readany()
        response.close()  # gone, with most of the CSV unsent
    async with asyncio.timeout(5):
        await closed.wait()  # the export's read connection is closed, not left behind
    await export.gw.stop()


async def test_the_export_filters_by_type_and_door(export: Export) -> None:
    await fill(export.gw, 20)  # 10:00 to 19:30 on 1 March, site time
    base = {"from": "2025-03-01", "to": "2025-03-02T00:00:00+01:00"}
    async with export.session.get(export.url, params=base) as response:
        everything = rows(await response.text())
    async with export.session.get(
        export.url, params={**base, "type": "access.denied", "door": "lobby"}
    ) as response:
        assert response.status == 200
        denied = rows(await response.text())
    assert len(everything) == 20
    assert denied == [
        r for r in everything if r["type"] == "access.denied" and r["door"] == "lobby"
    ]
    assert denied
    # type repeats, or lists types separated by commas.
    both = [("from", "2025-03-01"), ("to", "2025-03-02"), ("type", "access.denied")]
    async with export.session.get(
        export.url, params=[*both, ("type", "access.granted,door.opened")]
    ) as response:
        assert rows(await response.text()) == everything


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("to=2025-02-01", "from", "'from' is required"),
        ("from=2025-01-01", "to", "'to' is required"),
        ("from=yesterday&to=2025-02-01", "from", "'from' 'yesterday' is not a date"),
        ("from=2025-01-01&to=2025-02-30", "to", "'to' '2025-02-30' is not a date"),
        ("from=2025-02-01&to=2025-01-01", "to", "must be later than 'from'"),
        ("from=2025-01-01&to=2025-02-01&type=access.maybe", "type", "not an event type"),
        ("from=2025-01-01&to=2025-02-01&door=a&door=b", "door", "'door' may be given once"),
    ],
)
async def test_bad_parameters_are_refused_naming_the_parameter(
    export: Export, query: str, field: str, message: str
) -> None:
    async with export.session.get(f"{export.url}?{query}") as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["field"] == field
    assert message in body["error"]


async def test_the_export_is_for_the_admin_only(export: Export) -> None:
    # Forwarded: not this machine's own request, so the loopback exemption does not apply.
    async with export.session.get(
        export.url,
        params={"from": "2025-01-01", "to": "2025-02-01"},
        headers={"X-Forwarded-For": "192.0.2.7"},
    ) as response:
        assert response.status == 401
        assert "log in" in json.loads(await response.text())["error"]


async def test_an_unreadable_journal_is_a_503(export: Export) -> None:
    await export.gw.journal.stop()
    path = export.gw.journal.path
    path.unlink()
    async with export.session.get(
        export.url, params={"from": "2025-01-01", "to": "2025-02-01"}
    ) as response:
        assert response.status == 503
        assert "no journal at" in (await response.json())["error"]


async def test_the_dashboard_has_the_export_form(export: Export) -> None:
    base = export.url.removesuffix("/api/events/export")
    async with export.session.get(base + "/") as response:
        page = await response.text()
    form = page.split('<form id="export-form"', 1)[1].split("</form>", 1)[0]
    assert 'action="/api/events/export"' in form
    assert 'method="get"' in form
    assert 'type="date" name="from"' in form
    assert 'type="date" name="to"' in form
    options = re.findall(r'<option value="([^"]*)">', form)
    assert options[0] == ""  # every type
    assert {"access.granted", "access.denied"} <= set(options[1:]) <= {t.value for t in EventType}
    assert "<script>" not in page  # scripts come from files (CSP script-src 'self')
