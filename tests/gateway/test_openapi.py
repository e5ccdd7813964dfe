"""The OpenAPI document (gateway/data/openapi.json): valid, complete, served, and true.

"True" is checked by fuzzing a running gateway over real HTTP with schemathesis: every
response must be a documented status with the documented content type and body schema, and
none may be a 5xx.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import time
import traceback
from collections.abc import Callable
from importlib import resources
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CheckContext
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import Gateway
from gateway.openapi import document
from tests.conftest import ConfigFactory, GatewayFactory

#: Pages, their scripts and Prometheus text: not JSON API, so not in the document.
UNDOCUMENTED_ROUTES = frozenset(
    {
        ("GET", "/"),
        ("GET", "/login"),
        ("GET", "/admin.js"),
        ("GET", "/login.js"),
        ("GET", "/account"),
        ("GET", "/account.js"),
        ("GET", "/officernd"),
        ("GET", "/member"),
        ("GET", "/doors"),
        ("GET", "/doors.js"),
        ("GET", "/access"),
        ("GET", "/access.js"),
        ("GET", "/invitations"),
        ("GET", "/invitations.js"),
        ("GET", "/setup"),
        ("GET", "/setup.js"),
        ("GET", "/selftest"),
        ("GET", "/selftest.js"),
        ("GET", "/dashboard.js"),
        ("GET", "/metrics"),
    }
)

#: Operations the fuzzer leaves alone, and why.
NOT_FUZZED = {
    # An endless text/event-stream: a request never completes.
    ("GET", "/api/stream"): "endless server-sent event stream",
    # Both call out to the URLs in the request body (the cloud, OfficeRnD): a fuzzer would send
    # the gateway to arbitrary hosts; a successful claim also restarts the gateway.
    ("POST", "/api/provisioning/claim"): "calls the cloud_url of the request",
    ("POST", "/api/officernd/activation"): "calls the api_base/identity_url of the request",
}


#: Guarded routes a session restricted to setting up two-factor authentication still reaches,
#: which never answer its 403 (a GET needs no CSRF token either).
NO_TWO_FACTOR_403 = frozenset({("GET", "/api/admin/session"), ("GET", "/api/admin/totp")})


def documented_statuses(doc: dict[str, Any], method: str, path: str) -> set[int]:
    """The statuses ``doc`` documents for an operation."""
    return {int(code) for code in doc["paths"][path][method.lower()]["responses"]}


def no_server_error_unless_documented(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    """No 500, ever; a 502/503 only where it is a documented answer (OfficeRnD not reachable...).

    (schemathesis's not_a_server_error refuses every 5xx, even a deliberate, documented one.)
    """
    status = response.status_code
    if status >= 500:
        doc = case.operation.schema.raw_schema
        if status not in documented_statuses(doc, case.operation.method, case.operation.path):
            raise AssertionError(f"server error {status}: {response.text[:2000]}")
    return None


CHECKS = [
    no_server_error_unless_documented,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25
#: The card enrolment waits up to timeout_s for a card: the fuzzer may wait 1 s at most.
ENROL_TIMEOUT_CAP_S = 1


def _file_document() -> dict[str, Any]:
    text = resources.files("gateway").joinpath("data/openapi.json").read_text(encoding="utf-8")
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }


def _registered(gw: Gateway) -> set[tuple[str, str]]:
    # aiohttp adds a HEAD for every GET by itself: the GET stands for both.
    return {
        (route.method, route.resource.canonical)
        for route in gw.web.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = _file_document()
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(copy.deepcopy(doc)).validate()  # raises if invalid


def test_the_validation_would_reject_a_broken_document() -> None:
    broken = _file_document()
    broken["paths"]["/api/health"]["get"]["responses"]["200"].pop("description")
    with pytest.raises(Exception, match="description"):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_operation_has_a_summary_a_success_and_its_security() -> None:
    doc = _file_document()
    schemes = set(doc["components"]["securitySchemes"])
    assert {"adminCookie", "bearer"} <= schemes
    assert doc["components"]["securitySchemes"]["adminCookie"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": "luckey_admin",
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), where
            assert any(code.startswith("2") for code in op["responses"]), where
            security = op.get("security", [])
            names = {name for requirement in security for name in requirement}
            assert names <= schemes, where
            if "adminCookie" in names and {} not in security:  # guarded, not merely accepted
                assert "401" in op["responses"], where
                if (method.upper(), path) not in NO_TWO_FACTOR_403:
                    # A session that must set up two-factor authentication first.
                    assert "403" in op["responses"], (
                        f"{where}: document its 403 (#/components/responses/TwoFactorSetupRequired)"
                    )
                if method != "get":
                    params = [p.get("$ref", "") for p in op.get("parameters", [])]
                    assert "#/components/parameters/CsrfToken" in params, where
                    assert "403" in op["responses"], where


async def test_the_document_lists_every_route_of_the_app(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    registered = _registered(gw)
    assert registered >= UNDOCUMENTED_ROUTES  # no stale entry hides a missing route
    expected = registered - UNDOCUMENTED_ROUTES
    documented = _documented(_file_document())
    assert sorted(expected - documented) == [], "routes missing from gateway/data/openapi.json"
    assert sorted(documented - expected) == [], "documented routes the app does not have"


async def test_the_gateway_serves_the_document(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config())
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gw.web.port}/api/openapi.json") as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        served = await response.json()
    assert served == _file_document() == document()


#: Ids of the demo site (and credentials in several kinds): random ids would only ever reach the
#: "no such door/user" answers, these reach the handlers' real work.
KNOWN_VALUES: dict[str, list[str]] = {
    "door": ["front", "lobby", "office-3", "server-room"],
    "user": ["ada", "bob", "carla", "dan", "eve"],
    "credential": [
        "nfc_uid:04A1B2C3D4E5F6",
        "nfc_uid:04CA71A0000001",
        "mech_key:A1A2A3A4A5A6A7A8",
        "ntag424:04A1B2C3D4E5F6",
        "desfire:04B0B0B0B0B0B0",
        "ble_phone_key:0123456789abcdef",
        "nfc_uid:zz",
    ],
}
_KNOWN = st.fixed_dictionaries(
    {name: st.none() | st.sampled_from(values) for name, values in KNOWN_VALUES.items()}
)


def _use_known(pair: tuple[Case[Any], dict[str, str | None]]) -> Case[Any]:
    """The case with some of its ids replaced by ones the site has."""
    case, known = pair
    for name, value in known.items():
        if value is None:
            continue
        if isinstance(case.path_parameters, dict) and name in case.path_parameters:
            case.path_parameters[name] = value
        if isinstance(case.body, dict) and name in case.body:
            case.body[name] = value
    return case


def _cap_enrol_timeout(case: Case[Any]) -> Case[Any]:
    if isinstance(case.body, dict):
        timeout = case.body.get("timeout_s")
        if not isinstance(timeout, int | float) or timeout > ENROL_TIMEOUT_CAP_S:
            case.body["timeout_s"] = ENROL_TIMEOUT_CAP_S
    return case


Statuses = collections.Counter[tuple[str, str, int]]


def _fuzz_operation(
    operation: APIOperation[Any, Any, Any, Any],
    base_url: str,
    http: requests.Session,
    mode: GenerationMode,
    headers: dict[str, str],
    found: tuple[list[str], Statuses],
) -> None:
    """Run the cases of one operation; a failure is recorded in ``found``, not raised."""
    failures, statuses = found
    method, path = operation.method.upper(), operation.path
    strategy: st.SearchStrategy[Case[Any]] = st.tuples(
        operation.as_strategy(generation_mode=mode), _KNOWN
    ).map(_use_known)
    if (method, path) == ("POST", "/api/doors/{door}/enrol"):
        strategy = strategy.map(_cap_enrol_timeout)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        response = case.call(base_url=base_url, session=http, headers=headers, timeout=15)
        statuses[(method, path, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        # Nothing to break: no parameters and no body (negative mode), so no case at all.
        assert mode is GenerationMode.NEGATIVE, operation.label
    except (Exception, BaseExceptionGroup) as err:  # every operation's failures are reported
        text = "".join(traceback.format_exception(err)).strip()
        failures.append(f"{mode.value} {method} {path}:\n{text}")


def _fuzz(
    doc: dict[str, Any],
    base_url: str,
    *,
    headers: dict[str, str] | None = None,
    verify: bool | str = True,
    include: Callable[[str, str], bool] = lambda method, path: True,
) -> tuple[list[str], Statuses]:
    """Fuzz every operation not in NOT_FUZZED: the failures, and the statuses answered."""
    schema = schemathesis.openapi.from_dict(copy.deepcopy(doc))
    found: tuple[list[str], Statuses] = ([], collections.Counter())
    with requests.Session() as http:
        http.verify = verify
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            key = (operation.method.upper(), operation.path)
            if key in NOT_FUZZED or not include(*key):
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(operation, base_url, http, mode, headers or {}, found)
    return found


#: Operations whose real work the fuzz must reach (a 2xx), not only their refusals.
MUST_SUCCEED = [
    ("POST", "/api/decide"),
    ("POST", "/api/simulator/doors/{door}/present"),
    ("POST", "/api/simulator/phones"),
    ("POST", "/api/doors/{door}/pulse"),
    ("GET", "/api/users"),
    ("GET", "/api/doors/{door}/who-can"),
    ("GET", "/api/users/{user}/can-open"),
    ("GET", "/api/events"),
    ("GET", "/api/diagnostics"),
]


@pytest.mark.timeout(120)
async def test_fuzzing_a_running_gateway_finds_only_documented_answers(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    # Loopback listener: this machine's requests pass the admin guard without a session.
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    started = time.monotonic()
    # requests is blocking: the fuzzer runs in a thread while this loop serves the gateway.
    failures, statuses = await asyncio.to_thread(
        _fuzz, _file_document(), f"http://127.0.0.1:{gw.web.port}"
    )
    elapsed = time.monotonic() - started
    assert failures == [], "\n\n".join(failures)
    assert sum(statuses.values()) > 1000
    reached = {(method, path) for method, path, status in statuses if 200 <= status < 300}
    assert [op for op in MUST_SUCCEED if op not in reached] == []
    assert statuses[("POST", "/api/member/login", 500)] == 0
    assert not any(status == 500 for _, _, status in statuses)
    assert elapsed < 90, f"the fuzz run took {elapsed:.0f} s"


async def test_the_fuzz_catches_an_undocumented_status(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    """The checks bite: with 400 left out of /api/decide, its refusals are failures."""
    gw = await start_gateway(gateway_config())
    doc = _file_document()
    del doc["paths"]["/api/decide"]["post"]["responses"]["400"]
    failures, statuses = await asyncio.to_thread(
        _fuzz,
        doc,
        f"http://127.0.0.1:{gw.web.port}",
        include=lambda method, path: path == "/api/decide",
    )
    assert statuses[("POST", "/api/decide", 400)] > 0
    assert failures
    assert all("/api/decide" in failure for failure in failures)
    assert "400" in failures[0]
