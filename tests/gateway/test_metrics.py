"""GET /metrics on a running gateway: what Prometheus scrapes, parsed back with its own parser."""

from __future__ import annotations

import math

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from drivers.base import CredentialRead
from gateway.app import Gateway
from tests.conftest import ADA, CARLA, UNKNOWN, GatewayFactory

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: Gateway) -> tuple[str, Samples]:
    url = f"http://127.0.0.1:{gw.config.web.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        assert reply.status == 200
        content_type = reply.headers["Content-Type"]
        text = await reply.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return content_type, samples


async def test_decisions_latency_outbox_and_cache_are_exposed(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    for value in (ADA, ADA, CARLA, UNKNOWN):
        await gw.entry.handle(CredentialRead("front", "nfc_uid", value))

    content_type, samples = await scrape(gw)
    assert content_type.startswith("text/plain; version=0.0.4")  # what every Prometheus reads
    decisions = "luckey_decisions_total"
    granted = (("kind", "nfc_uid"), ("reason", "granted"), ("result", "granted"))
    assert samples[(decisions, granted)] == 2
    disabled = (("kind", "nfc_uid"), ("reason", "user_disabled"), ("result", "denied"))
    assert samples[(decisions, disabled)] == 1
    unknown = (("kind", "nfc_uid"), ("reason", "unknown_credential"), ("result", "denied"))
    assert samples[(decisions, unknown)] == 1
    assert samples[("luckey_decision_seconds_count", ())] == 4
    assert 0 < samples[("luckey_decision_seconds_sum", ())] < 1
    assert samples[("luckey_events_total", (("type", "access.granted"),))] == 2
    assert samples[("luckey_outbox_events", ())] >= 5  # started, seeded, four decisions…
    assert samples[("luckey_cache_version", ())] == gw.cache.version
    assert samples[("luckey_cache_entities", (("collection", "doors"),))] == 4
    assert samples[("luckey_cloud_offline_seconds", ())] == 0  # no cloud configured
    assert math.isnan(samples[("luckey_officernd_sync_age_seconds", ())])  # not activated


async def test_each_gateway_keeps_its_own_figures(start_gateway: GatewayFactory) -> None:
    first = await start_gateway()
    await first.entry.handle(CredentialRead("front", "nfc_uid", ADA))
    second = await start_gateway()
    _, samples = await scrape(second)
    assert samples.get(("luckey_decision_seconds_count", ()), 0) == 0
