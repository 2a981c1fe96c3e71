"""What the host and the read-only commands load as they start: only what they use.

On a big home most of a command's time, and much of the host's start, was importing
libraries it never called (issue 13). These run real interpreters and read the modules
they imported (``-X importtime``), so a new top-level import is caught here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from host.service import Cronbox

WEB = ("fastapi", "uvicorn", "starlette", "httpx2")
"""The HTTP server and client libraries: only the API's process and gateways need them."""


def imported(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    """Every module a fresh ``python -X importtime ARGV`` imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True, text=True, check=True, env=env, timeout=120,
    )  # fmt: skip
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def of_packages(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in packages}


def test_the_host_starts_without_the_http_server_or_client_libraries() -> None:
    modules = imported(["-c", "import host.daemon"])
    assert "host.daemon" in modules
    assert of_packages(modules, WEB) == set()
    assert {"host.http", "host.gateway_server"} & modules == set()


@pytest.mark.parametrize("command", [["status"], ["task", "list"], ["task", "list", "--json"]])
def test_a_read_only_command_loads_neither_the_host_nor_its_runtimes(
    tmp_path: Path, command: list[str]
) -> None:
    home = tmp_path / "home"
    store = Cronbox(home)
    session = store.create_session("work")
    store.schedule_task(session.id, {"prompt": "p", "recurrence": "0 9 * * *"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBOX_")}
    env["CRONBOX_HOME"] = str(home)
    modules = imported(["-m", "host.cli", *command], env)
    assert "host.reading" in modules  # it did open the central index
    assert of_packages(modules, WEB) == set()
    host_side = {"host.daemon", "host.sweep", "host.runtimes", "host.http", "host.gateway"}
    assert host_side & modules == set()
    # Nor the write side: the service's commands, the session files, sqlite-utils.
    write_side = {"host.service", "host.store.files", "cronbox_shared.sessiondb"}
    assert write_side & modules == set()
    assert of_packages(modules, ("sqlite_utils",)) == set()
    # A stored recurrence is described without croniter, which checked it when stored.
    assert of_packages(modules, ("croniter",)) == set()
