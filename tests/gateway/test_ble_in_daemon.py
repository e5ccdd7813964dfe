"""BLE doors on real hardware backends: one bleak reader per door, on the configured adapter."""

from __future__ import annotations

import logging

import pytest

from drivers.ble_reader import BleReader, ReaderState
from gateway.config import ConfigError
from gateway.reader_identity import load_reader_identity
from gateway.verifiers import READER_KEY_FILE
from tests.conftest import ConfigFactory, GatewayFactory

DOORS = {"lobby": {"ble_proximity": "-52"}}


async def test_each_ble_door_gets_a_reader_that_waits_for_its_adapter(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = gateway_config(doors=DOORS, ble={"adapter": "hci7"})
    config.gateway.state_dir.mkdir(parents=True)
    load_reader_identity(config.gateway.state_dir / READER_KEY_FILE, create=True)
    gw = await start_gateway(config)
    readers = [r for r in gw.reader_set.own if isinstance(r, BleReader)]
    assert [(r.reader_id, r.threshold_dbm) for r in readers] == [("lobby", -52)]
    # No Bluetooth on this machine: the reader keeps waiting for the adapter, the gateway runs.
    assert [r.state for r in readers] == [ReaderState.WAITING]
    await gw.stop()
    assert [r.state for r in readers] == [ReaderState.STOPPED]


async def test_without_a_reader_key_phones_are_refused_and_said_so(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        gw = await start_gateway(gateway_config(doors=DOORS))
    assert not [r for r in gw.reader_set.own if isinstance(r, BleReader)]
    assert "phones cannot open lobby: this gateway has no usable BLE reader key" in (caplog.text)


def test_a_second_ble_door_on_the_one_adapter_is_refused(gateway_config: ConfigFactory) -> None:
    with pytest.raises(ConfigError) as info:
        gateway_config(
            doors={"front": {"ble_proximity": "touch"}, "lobby": {"ble_proximity": "-52"}}
        )
    assert info.value.key_path == "doors.lobby.ble_proximity"
    assert "already serves door 'front'" in str(info.value)
    virtual = gateway_config(
        hardware={"backend": "virtual"},
        doors={"front": {"ble_proximity": "touch"}, "lobby": {"ble_proximity": "-52"}},
    )  # a simulated radio per door
    assert virtual.doors["lobby"].ble_proximity == "-52"
