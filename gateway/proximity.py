"""BLE proximity: how close a phone must be to a door, as a smoothed RSSI threshold in dBm.

The presets are the published reference thresholds for a phone advertising at its default
power (docs/ble-credential-protocol.md); a site calibrates with a custom value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

RSSI_PRESETS_DBM: Final[Mapping[str, int]] = MappingProxyType(
    {"touch": -35, "near": -45, "far": -60}  # against the reader; 2-3 ft; 7-8 ft
)
MIN_THRESHOLD_DBM: Final = -100  # below this every phone in the building is "near"
MAX_THRESHOLD_DBM: Final = -20  # above this no phone ever is


class ProximityError(ValueError):
    """A proximity setting that is neither a preset nor a threshold in range."""


def proximity_threshold(value: str | int) -> int:
    """The RSSI threshold (dBm) for a preset name or a number of dBm; ProximityError if neither."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in RSSI_PRESETS_DBM:
            return RSSI_PRESETS_DBM[text]
        match = re.fullmatch(r"([+-]?\d+)\s*(dbm)?", text)
        if match:
            number = int(match.group(1))
    if number is not None and MIN_THRESHOLD_DBM <= number <= MAX_THRESHOLD_DBM:
        return number
    presets = ", ".join(f"{name} ({dbm} dBm)" for name, dbm in RSSI_PRESETS_DBM.items())
    raise ProximityError(
        f"proximity {value!r} is not allowed; use {presets} or a threshold in dBm from "
        f"{MIN_THRESHOLD_DBM} to {MAX_THRESHOLD_DBM} (e.g. -50)"
    )
