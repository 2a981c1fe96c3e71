"""Building the agent image from the installed package (``cronbox image build``).

The build context is made here, on the host: the three packages a container runs
(``agent_runner``, ``mcp_tools``, ``cronbox_shared``) copied from where they are
installed, their dependencies pinned to the versions the host runs, and those
dependencies as wheels for the base image's own Python and platform (fetched by the
host's pip, so the image build itself needs no network and installs offline). The
engine builds ``Dockerfile.agent`` from that context.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import docker.errors
from docker import DockerClient

from cronbox_shared.errors import ImageBuildFailed
from host.runtimes.docker import connect, engine_reason

DOCKERFILE = "Dockerfile.agent"
DEFAULT_BASE = "python:3.12-slim"
# What a container imports: cronbox's own packages beside the host's, and the
# distributions they need (the host's CLI, tables and Docker client stay out).
PACKAGES = ("agent_runner", "mcp_tools", "cronbox_shared")
REQUIREMENTS = (
    "sqlite-utils", "croniter", "cron-descriptor", "pydantic", "pydantic-settings",
    "python-dotenv", "anyio", "mcp", "tzdata", "openai", "anthropic",
)  # fmt: skip
_PROBE = (
    "import json, platform, sys, sysconfig; print(json.dumps({'python': '%d.%d' % "
    "sys.version_info[:2], 'platform': sysconfig.get_platform(), "
    "'libc': platform.libc_ver()}))"
)
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


@dataclass(frozen=True)
class BasePython:
    """The Python of a base image, as pip's wheel tags name it."""

    version: str
    platforms: tuple[str, ...]

    @classmethod
    def parse(cls, probe: dict[str, Any]) -> BasePython:
        """Wheel platforms from ``sysconfig.get_platform()`` and the glibc version."""
        arch = str(probe["platform"]).removeprefix("linux-")
        libc, libc_version = probe.get("libc") or ("", "")
        platforms = [f"linux_{arch}"]
        if libc == "glibc" and libc_version:
            major, minor = (int(p) for p in str(libc_version).split(".")[:2])
            platforms += [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
            platforms += [f"manylinux{tag}_{arch}" for tag in ("2014", "2010", "1")]
        return cls(version=str(probe["python"]), platforms=tuple(platforms))


def probe_base(client: DockerClient, base: str) -> BasePython:
    """Run the base image's ``python3`` once (no network) to learn its version and tags.

    A base image not present locally is pulled; one that can be neither found nor
    pulled raises ImageBuildFailed naming both ways out.
    """
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(base)
        except docker.errors.DockerException as exc:
            raise ImageBuildFailed(
                base,
                f"base image {base} is not here and cannot be pulled ({engine_reason(exc)}); "
                "make one with scripts/docker-setup or pass --base",
            ) from exc
    try:
        out = client.containers.run(
            base, ["python3", "-c", _PROBE], entrypoint=[], network_mode="none", remove=True,
            stdout=True, stderr=True,
        )  # fmt: skip
    except docker.errors.DockerException as exc:
        raise ImageBuildFailed(base, f"its python3 did not run ({engine_reason(exc)})") from exc
    return BasePython.parse(json.loads(bytes(out).decode()))


def pinned_requirements() -> list[str]:
    """The container's dependencies at the versions installed beside this host."""
    return [f"{name}=={package_version(name)}" for name in REQUIREMENTS]


def make_context(dest: Path, python: BasePython, log: Callable[[str], None]) -> None:
    """Fill ``dest`` with the Dockerfile, app/, requirements.txt and wheels/."""
    source = _dockerfile()
    shutil.copy(source, dest / DOCKERFILE)
    for name in PACKAGES:
        module = sys.modules.get(name) or __import__(name)
        package = Path(str(module.__file__)).parent
        shutil.copytree(package, dest / "app" / name, ignore=shutil.ignore_patterns("__pycache__"))
    requirements = dest / "requirements.txt"
    requirements.write_text("\n".join(pinned_requirements()) + "\n")
    log(f"fetching wheels for Python {python.version} ({python.platforms[0]})")
    platforms = [arg for tag in python.platforms for arg in ("--platform", tag)]
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", python.version,
            "--implementation", "cp", *platforms, "--dest", str(dest / "wheels"),
            "-r", str(requirements),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise ImageBuildFailed(
            "wheels", (lines[0] if lines else done.stderr.strip()[-300:]) or "pip failed"
        )


def _dockerfile() -> Path:
    path = Path(__file__).resolve().parent.parent / DOCKERFILE
    if not path.is_file():
        raise ImageBuildFailed(
            DOCKERFILE, f"{DOCKERFILE} is not beside the installed package; build from a "
            "source checkout of cronbox (pip install -e .)",
        )  # fmt: skip
    return path


@dataclass(frozen=True)
class BuildStep:
    """One line of the engine's build output; ``step`` / ``steps`` on a step's first line."""

    text: str
    step: int | None = None
    steps: int | None = None


def build(client: DockerClient, tag: str, base: str, context: Path) -> Iterator[BuildStep]:
    """Build ``Dockerfile.agent`` in ``context`` as ``tag``, yielding the engine's output.

    Raises ImageBuildFailed with the engine's error line.
    """
    try:
        stream = client.api.build(
            path=str(context), dockerfile=DOCKERFILE, tag=tag, buildargs={"BASE_IMAGE": base},
            rm=True, forcerm=True, pull=False, decode=True,
        )  # fmt: skip
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildFailed(tag, str(chunk["error"]).strip())
            text = str(chunk.get("stream", "")).strip()
            if not text:
                continue
            match = _STEP.match(text)
            if match:
                yield BuildStep(match.group(3), int(match.group(1)), int(match.group(2)))
            else:
                yield BuildStep(text)
    except docker.errors.DockerException as exc:
        raise ImageBuildFailed(tag, engine_reason(exc)) from exc


def build_image(
    tag: str, base: str, on_step: Callable[[BuildStep], None], log: Callable[[str], None]
) -> str:
    """Make the context in a temporary directory and build; the new image's id."""
    client = connect()
    python = probe_base(client, base)
    with tempfile.TemporaryDirectory(prefix="cronbox-image-") as tmp:
        make_context(Path(tmp), python, log)
        for step in build(client, tag, base, Path(tmp)):
            on_step(step)
    return str(client.images.get(tag).id)
