"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the backend the host uses)."""
    return "asyncio"
