"""The online signer never commits a seal after the caller's deadline (docs/cloud-api.md)."""
from __future__ import annotations

from datetime import timedelta

from cloud_helpers import invoice_request


async def _seal(cloud, agent, deadline, expect):
    body = {"invoice": invoice_request().model_dump(mode="json"),
            "deadline": deadline.isoformat()}
    return await cloud.post("/v1/seal", body, agent.headers, expect)


async def test_a_request_arriving_after_its_deadline_seals_nothing(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    refused = await _seal(cloud, agent, cloud.clock.now - timedelta(seconds=1), 422)
    assert refused["type"].endswith("/deadline_passed")
    sealed = await _seal(cloud, agent, cloud.clock.now + timedelta(seconds=5), 201)
    assert sealed["security"]["fiscal_number"] == 1  # the refused one took no number


async def test_a_deadline_passing_while_sealing_rolls_the_seal_back(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    service = cloud.service
    real_now = service.now
    calls = []

    def slow_clock():
        # The first reading (arrival) is before the deadline; the last (just before the commit)
        # after it: the seal is rolled back.
        calls.append(1)
        return real_now() + timedelta(seconds=10 * (len(calls) - 1))

    service.now = slow_clock
    try:
        refused = await _seal(cloud, agent, real_now() + timedelta(seconds=5), 422)
    finally:
        service.now = real_now
    assert refused["type"].endswith("/deadline_passed")
    assert await cloud.ledger("KIN-01") == []
    sealed = await _seal(cloud, agent, cloud.clock.now + timedelta(seconds=5), 201)
    assert sealed["security"]["fiscal_number"] == 1
