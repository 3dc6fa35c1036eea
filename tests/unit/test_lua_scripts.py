"""The Redis backend's Lua scripts, one file each: every file is run or included, each loads on a
real Redis, and an include takes its line's place."""

from __future__ import annotations

from importlib import resources

import pytest

from enrichment_middleware.backends.lua_scripts import (
    _INCLUDE,
    ALL_OR_NOTHING,
    SCRIPTS,
    all_or_nothing_source,
    source,
)

LUA = resources.files("enrichment_middleware.backends").joinpath("lua")


def test_every_file_is_a_script_or_included_by_one() -> None:
    files = {path.name.removesuffix(".lua") for path in LUA.iterdir() if path.name.endswith(".lua")}
    included = {
        m["name"] for name in files for m in _INCLUDE.finditer(LUA.joinpath(f"{name}.lua").read_text())
    }
    # The all-or-nothing driver runs after the primitives it is given, never alone.
    expected = set(SCRIPTS) | included | {ALL_OR_NOTHING}
    assert files == expected, files ^ expected
    assert not set(SCRIPTS) & included, "a script is run on its own or included, not both"


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_loads_on_redis_with_its_includes_in_place(name: str, redis_client: object) -> None:
    text = source(name)
    assert "-- include:" not in text and "redis.call" in text
    if name in ("gcra_reserve", "gcra_claim"):
        assert "local function reserve()" in text and text.index("redis.call('TIME')") < text.index(
            "reserve()"
        )
    sha = redis_client.script_load(text)  # type: ignore[attr-defined]  # a syntax error raises here
    assert redis_client.script_exists(sha) == [True]  # type: ignore[attr-defined]


def test_the_all_or_nothing_script_loads_with_every_primitive(redis_client: object) -> None:
    text = all_or_nothing_source(tuple(SCRIPTS))
    assert text.count("= function(KEYS, ARGV)") == len(SCRIPTS)
    redis_client.script_load(text)  # type: ignore[attr-defined]  # a syntax error raises here


def test_an_unknown_script_is_named_with_the_known_ones() -> None:
    with pytest.raises(LookupError, match=r"no Lua script 'lease_acquir'.*lease_acquire"):
        source("lease_acquir")
