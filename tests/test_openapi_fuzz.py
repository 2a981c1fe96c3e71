"""The OpenAPI document checked against the handlers by schemathesis, on a real `cronbox run`.

Schemathesis generates requests from the document (valid and invalid ones) and checks
every answer: no server error, a documented status code and content type, a body that
matches the documented schema, bad input refused, authentication not ignored.

Left out: "schema-valid requests are accepted". A request can fit the document and still
be refused with one sentence (a time in the past, a cron field out of range, an unknown
session), which is what the API is for; those refusals are checked by test_http.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

from host.service import Cronbox
from tests.hosting import ephemeral_socket

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    home = root / "home"
    store = Cronbox(home)
    store.create_session("alpha")
    store.schedule_task("alpha", {"taskId": "t1", "prompt": "p", "recurrence": "@daily"})
    probe = ephemeral_socket()
    port = probe.getsockname()[1]
    probe.close()
    env = {**os.environ, "TZ": "UTC", "CRONBOX_HOME": str(home), "CRONBOX_HTTP_PORT": str(port),
           "CRONBOX_MIN_INTERVAL": "60"}  # fmt: skip
    env.pop("CRONBOX_API_KEY", None)
    with (root / "host.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "run"], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{url}/health").status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, (root / "host.log").read_text()
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_every_endpoint_answers_as_its_openapi_document_says(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(operation.as_strategy(generation_mode=mode))
            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
            def conforms(case: Any) -> None:
                case.call_and_validate(base_url=api_url, excluded_checks=[positive_data_acceptance])

            try:
                conforms()
            except Unsatisfiable:
                # Nothing to get wrong: an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
                continue
            checked.append((operation.label, mode))
    negative = {label for label, mode in checked if mode is GenerationMode.NEGATIVE}
    assert {"POST /api/tasks", "PATCH /api/tasks/{task}", "GET /api/tasks"} <= negative, negative


def test_the_document_is_served_and_names_every_path(api_url: str) -> None:
    doc = httpx2.get(f"{api_url}/openapi.json").json()
    assert json.dumps(doc)
    assert {"/health", "/version", "/metrics", "/api/tasks", "/api/scheduler"} <= set(doc["paths"])
