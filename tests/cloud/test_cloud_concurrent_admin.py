"""Two operators (or two scripts) writing the same registry row at once, over real HTTP: one
wins, the others get a 409 problem, never a 500. On PostgreSQL the requests run in parallel
transactions (READ COMMITTED: both see no row, both insert); on SQLite the write lock
serializes them. STALELA_TEST_CLOUD_DB=postgresql runs this file on PostgreSQL."""
from __future__ import annotations

import asyncio

PROBLEMS = "https://stalela.cd/problems/"
ROUNDS = 12  # rows raced for; one lost race is enough to show a 500
RACERS = 4  # requests per row, as many as the service's database threads


async def _race(cloud, path: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    async def one(body):
        resp = await cloud.client.post(path, json=body, headers=cloud.admin)
        return resp.status, await resp.json(content_type=None)
    return await asyncio.gather(*(one(b) for b in bodies))


def _one_winner(answers: list[tuple[int, dict]], kinds: set[str]) -> None:
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] + [409] * (len(answers) - 1), answers
    for status, body in answers:
        if status == 409:
            assert body["type"].removeprefix(PROBLEMS) in kinds, body
            assert body["status"] == 409 and body["detail"]


async def test_the_same_merchant_created_at_once(cloud):
    for n in range(ROUNDS):
        body = {"nif": f"A{n:07d}B", "name": "Racing SARL"}
        answers = await _race(cloud, "/v1/admin/merchants", [body] * RACERS)
        _one_winner(answers, {"merchant_exists", "concurrent_write"})
    # Each merchant exists once, as the winner made it: an outlet can be added for every one.
    for n in range(ROUNDS):
        await cloud.post("/v1/admin/outlets", {"id": f"O-{n}", "merchant_nif": f"A{n:07d}B", "name": "x"},
                         cloud.admin, 201)


async def test_the_same_outlet_created_at_once(cloud):
    await cloud.post("/v1/admin/merchants", {"nif": "A1234567B", "name": "M"}, cloud.admin, 201)
    for n in range(ROUNDS):
        body = {"id": f"KIN-{n:02d}", "merchant_nif": "A1234567B", "name": "Gombe"}
        answers = await _race(cloud, "/v1/admin/outlets", [body] * RACERS)
        _one_winner(answers, {"outlet_exists", "concurrent_write"})
    outlets = (await cloud.get("/v1/admin/outlets", cloud.admin))["outlets"]
    assert sorted(o["id"] for o in outlets) == [f"KIN-{n:02d}" for n in range(ROUNDS)]


async def test_one_device_bound_to_two_outlets_at_once(cloud):
    # Two outlets of one merchant: each bind holds its own outlet's lock, so only the database's
    # uniqueness of the MID stands between them.
    await cloud.outlet("KIN-01")
    await cloud.outlet("KIN-02")
    for n in range(ROUNDS):
        mid = f"AB0100{n:04d}"
        paths = [f"/v1/admin/outlets/KIN-0{1 + i % 2}/devices" for i in range(RACERS)]

        async def bind(path):
            resp = await cloud.client.post(path, json={"mid": mid, "nif": "A1234567B"}, headers=cloud.admin)
            return resp.status, await resp.json(content_type=None), path
        answers = await asyncio.gather(*(bind(p) for p in paths))
        winners = [a for a in answers if a[0] == 201]
        assert len(winners) == 1, answers
        winner_path = winners[0][2]
        for status, body, path in answers:
            if status == 201:
                continue
            if path == winner_path:
                assert status == 200, (status, body)  # the same binding again: unchanged
            else:
                assert status == 409 and body["type"].removeprefix(PROBLEMS) in {
                    "device_bound_elsewhere", "concurrent_write"}, (status, body)
    # Each MID ended bound to exactly one outlet.
    bound = [d["mid"] for o in ("KIN-01", "KIN-02")
             for d in (await cloud.get(f"/v1/outlets/{o}/devices", cloud.admin))["devices"] if d["bound"]]
    assert sorted(bound) == [f"AB0100{n:04d}" for n in range(ROUNDS)]
