"""What a session's container may use: network, memory, CPUs, processes.

Set globally (``CRONBOX_DOCKER_*``) and per session (``cronbox session create|update
--network --memory --cpus --pids``); a session's own value wins. Validated here, once,
for both; the ``process`` runtime cannot enforce them and ignores them.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from cronbox_shared.errors import InvalidInput

_MEMORY = re.compile(r"^(\d+)([bkmg]?)$", re.IGNORECASE)
_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# A container smaller than this cannot start a Python runner at all.
MIN_MEMORY = 32 * 1024**2
MIN_PIDS = 16
# Sharing the host's network (or another container's) would undo the isolation.
_FORBIDDEN_NETWORKS = {"host"}


@dataclass(frozen=True)
class ContainerLimits:
    """What a container may use; None leaves it to the host's setting."""

    network: str | None = None
    """``none`` or the name of a Docker network."""
    memory: str | None = None
    """A size such as ``512m`` (swap is never added)."""
    cpus: float | None = None
    pids: int | None = None

    @classmethod
    def of(cls, stored: dict[str, Any]) -> ContainerLimits:
        """From a session's stored ``container`` settings (unknown keys are ignored)."""
        return cls(**{k: v for k, v in stored.items() if k in cls.__dataclass_fields__})

    def stored(self) -> dict[str, Any]:
        """The values set, as a session stores them."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def over(self, base: ContainerLimits) -> ContainerLimits:
        """These limits, with ``base``'s where these leave one unset."""
        mine = self.stored()
        return ContainerLimits(**{**base.stored(), **mine})

    def describe(self) -> str:
        """``network none, memory 512m, cpus 1, pids 256`` (the values set)."""
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in self.stored().items())  # fmt: skip


DEFAULT_LIMITS = ContainerLimits(network="none", memory="512m", cpus=1.0, pids=256)


def memory_bytes(value: str) -> int:
    """``512m``, ``1g``, ``65536k`` or plain bytes; InvalidInput with the accepted forms."""
    match = _MEMORY.match(value.strip())
    if not match:
        raise InvalidInput(
            f'memory limit "{value}" is not a size; write it like 512m or 1g (bytes, k, m, g)'
        )
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < MIN_MEMORY:
        raise InvalidInput(f'memory limit "{value}" is below the 32m a runner needs to start')
    return size


def check_limits(limits: ContainerLimits, cpu_count: int | None = None) -> ContainerLimits:
    """Validate what a session (or the host's settings) asks of its containers."""
    if limits.memory is not None:
        memory_bytes(limits.memory)
    if limits.cpus is not None:
        most = cpu_count or os.cpu_count() or 1
        if not 0 < limits.cpus <= most:
            raise InvalidInput(f"cpus {limits.cpus:g} must be above 0 and at most {most}")
    if limits.pids is not None and limits.pids < MIN_PIDS:
        raise InvalidInput(f"pids limit {limits.pids} is below the {MIN_PIDS} a runner needs")
    if limits.network is not None:
        network = limits.network
        if network in _FORBIDDEN_NETWORKS or network.startswith("container:"):
            raise InvalidInput(
                f'network "{network}" would share another namespace with the container; '
                'use "none" or a named Docker network'
            )
        if not _NETWORK.match(network):
            raise InvalidInput(f'network "{network}" is not a Docker network name')
    return limits
