"""The recording upstream every security test forwards to, and the gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import StartGateway
from tests.security.recorder import Front, Recorder, recording_upstream


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with recording_upstream() as upstream:
        yield upstream


@pytest.fixture
def front(recorder: Recorder, gateway: StartGateway) -> Front:
    return Front(recorder, gateway)
