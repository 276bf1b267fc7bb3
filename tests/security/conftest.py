"""The recording upstream every security test forwards to."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.security.recorder import Recorder, recording_upstream


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with recording_upstream() as upstream:
        yield upstream
