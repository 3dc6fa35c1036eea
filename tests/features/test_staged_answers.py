"""Staged answers (staged_answers.feature): findings 5 and 7 of issue 8, on real workers."""

from __future__ import annotations

import collections
import re

import redis
from pytest_bdd import parsers, scenarios, then

from tests.features.conftest import World

scenarios("staged_answers.feature")

_STORED = re.compile(r"Stored \d+ POIs: chunk (\d+) of (fetch:\S+)\.")


@then(parsers.parse("every chunk was stored once, {least:d} chunks or more"))
def chunks_stored_once(world: World, least: int) -> None:
    lines = [line for w in world.workers for line in w.lines]
    stored = collections.Counter((m[2], int(m[1])) for line in lines if (m := _STORED.search(line)))
    assert len(stored) >= least, stored
    assert set(stored.values()) == {1}, stored
    assert not [line for line in lines if "was stored already" in line]


@then("no staged POIs are left")
def no_staged_pois(world: World) -> None:
    client = redis.Redis.from_url(world.redis_url)
    try:
        keys = list(client.scan_iter("enrichment:stage:*"))
        assert keys, "the job should have left its stage's markers"
        left = [(key, field) for key in keys for field in client.hkeys(key) if field.startswith(b"chunk:")]
    finally:
        client.close()
    assert left == []


@then("the stand-in server received no query twice")
def no_query_twice(world: World) -> None:
    assert world.stub is not None
    queries = collections.Counter(request.query for request in world.stub.requests)
    assert queries and set(queries.values()) == {1}, queries.most_common(2)


@then(parsers.parse("no message in Redis is over {limit:d} bytes"))
def messages_bounded(world: World, limit: int) -> None:
    client = redis.Redis.from_url(world.redis_url)
    try:
        sizes = {}
        for key in client.scan_iter("*"):
            kind = client.type(key)  # type: ignore[no-untyped-call]
            # Queued and unacked messages (dramatiq:*.msgs) and parked ones (enrichment:park-payload:*).
            if kind == b"hash" and (key.endswith(b".msgs") or b"park-payload" in key):
                sizes.update({(key, field): len(value) for field, value in client.hgetall(key).items()})
    finally:
        client.close()
    assert sizes, "the store messages should be queued or parked"
    assert max(sizes.values()) <= limit, max(sizes.items(), key=lambda kv: kv[1])[0]


@then(parsers.parse("no worker log line is over {limit:d} characters"))
def log_lines_short(world: World, limit: int) -> None:
    longest = max(len(line) for w in world.workers for line in w.lines)
    assert longest <= limit, f"a log line of {longest} characters"
