"""The ``fail`` provider: every call fails, so the failure path can be tested end to end."""

from __future__ import annotations

from agent_runner.provider import Batch, ProviderResult

FAIL_MESSAGE = "provider 'fail' always fails (test provider)"


class FailingProvider:
    """Raises on every batch; the runner must record each row ``failed``."""

    async def run(self, batch: Batch) -> ProviderResult:
        raise RuntimeError(FAIL_MESSAGE)
