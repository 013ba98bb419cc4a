"""Enrollment tokens, agent tokens and admin authentication."""
from __future__ import annotations

import base64
import logging

from cloud_helpers import new_key


async def test_enrollment_returns_outlet_and_issuer(cloud):
    await cloud.outlet(time_zone="Africa/Lubumbashi", isf="ISF-9")
    token = await cloud.token("KIN-01")
    _, public = new_key()
    data = await cloud.post("/v1/enroll", {"token": token, "agent_public_key": public, "label": "box-1"},
                            expect=201)
    assert data["agent_token"] and data["agent_id"].startswith("AG-")
    assert data["outlet"] == {"id": "KIN-01", "name": "KIN-01", "time_zone": "Africa/Lubumbashi",
                              "isf": "ISF-9", "merchant_nif": "A1234567B",
                              "merchant_name": "Merchant A1234567B", "taxpayer": {"address": "BOULEVARD 23"}}
    issuer = await cloud.get("/v1/issuer")  # public, no token
    assert data["issuer_public_key"] == issuer["public_key"]
    assert issuer["key_id"] == data["issuer_key_id"]


async def test_enrollment_token_is_single_use(cloud):
    await cloud.outlet()
    token = await cloud.token("KIN-01")
    _, public = new_key()
    await cloud.post("/v1/enroll", {"token": token, "agent_public_key": public}, expect=201)
    again = await cloud.post("/v1/enroll", {"token": token, "agent_public_key": public}, expect=401)
    assert again["type"].endswith("/bad_enrollment_token") and "already used" in again["detail"]


async def test_expired_enrollment_token_refused(cloud):
    await cloud.outlet()
    token = await cloud.token("KIN-01", ttl="30m")
    cloud.clock.advance(minutes=31)
    _, public = new_key()
    data = await cloud.post("/v1/enroll", {"token": token, "agent_public_key": public}, expect=401)
    assert "expired" in data["detail"]


async def test_unknown_token_and_bad_key_refused(cloud):
    await cloud.outlet()
    _, public = new_key()
    await cloud.post("/v1/enroll", {"token": "stle_nope", "agent_public_key": public}, expect=401)
    token = await cloud.token("KIN-01")
    data = await cloud.post("/v1/enroll", {"token": token, "agent_public_key": "short"}, expect=422)
    assert data["type"].endswith("/bad_public_key")
    # The failed attempt did not burn the token.
    await cloud.post("/v1/enroll", {"token": token, "agent_public_key": public}, expect=201)


async def test_small_order_key_refused(cloud):
    """Under the identity point, the signature (R = identity, S = 0) verifies (by OpenSSL's rule)
    for every message: such a key must never be registered."""
    await cloud.outlet()
    token = await cloud.token("KIN-01")
    identity = base64.urlsafe_b64encode((1).to_bytes(32, "little")).decode().rstrip("=")
    data = await cloud.post("/v1/enroll", {"token": token, "agent_public_key": identity}, expect=422)
    assert data["type"].endswith("/bad_public_key") and "small-order" in data["detail"]
    _, public = new_key()  # the refusal did not burn the token
    await cloud.post("/v1/enroll", {"token": token, "agent_public_key": public}, expect=201)


async def test_agent_token_works_and_wrong_token_is_401(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    mine = await cloud.get("/v1/outlets/KIN-01", agent.headers)
    assert mine["id"] == "KIN-01"
    resp = await cloud.client.get("/v1/outlets/KIN-01", headers={"Authorization": "Bearer stla_wrong"})
    assert resp.status == 401
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await cloud.client.get("/v1/outlets/KIN-01")
    assert resp.status == 401


async def test_new_enrollment_retires_the_previous_agent(cloud):
    await cloud.outlet()
    old = await cloud.enroll()
    new = await cloud.enroll()
    await cloud.get("/v1/outlets/KIN-01", old.headers, expect=401)
    await cloud.get("/v1/outlets/KIN-01", new.headers)


async def test_admin_endpoints_refuse_agents(cloud):
    await cloud.outlet()
    agent = await cloud.enroll()
    data = await cloud.post("/v1/admin/merchants", {"nif": "B1", "name": "x"}, agent.headers, 403)
    assert data["type"].endswith("/admin_only")
    await cloud.post("/v1/admin/outlets/KIN-01/tokens", {}, agent.headers, 403)
    await cloud.get("/v1/admin/flags", agent.headers, expect=403)
    # ... and the admin is not an agent.
    await cloud.post("/v1/credentials", {}, cloud.admin, 403)


async def test_logs_never_contain_tokens_or_keys(cloud, caplog):
    caplog.set_level(logging.DEBUG, logger="stalela.cloud")
    await cloud.outlet()
    token = await cloud.token("KIN-01")
    _, public = new_key()
    data = await cloud.post("/v1/enroll", {"token": token, "agent_public_key": public}, expect=201)
    await cloud.get("/v1/outlets/KIN-01", {"Authorization": f"Bearer {data['agent_token']}"})
    from cloud_stub.logs import JsonLineFormatter

    text = "\n".join(JsonLineFormatter().format(r) for r in caplog.records)
    assert "agent.enrolled" in text and "http.request" in text
    for secret in (token, data["agent_token"], cloud.service.admin_token):
        assert secret not in text
    pem = cloud.service.config.issuer_key_path.read_text()
    assert pem.splitlines()[1] not in text
