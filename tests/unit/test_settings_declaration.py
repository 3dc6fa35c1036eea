"""Each setting is declared once (enrichment_actors/settings.py): README.md's table is rendered from the
declarations, every variable is read by one field, a bad value stops with one line, and a process that
only sends jobs reads only the settings declared for it."""

from __future__ import annotations

import dataclasses
import doctest
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

import enrichment_actors.settings_declaration
import enrichment_actors.settings_values
from enrichment_actors import settings_table
from enrichment_actors.settings import (
    TABLE,
    SenderSettings,
    Settings,
    SettingsError,
    load_sender_settings,
    load_settings,
)
from enrichment_actors.settings_declaration import declared

README = Path(__file__).resolve().parents[2] / "README.md"

#: A value each variable refuses, alone in an otherwise empty environment.
BAD = {
    "DATABASE_URL": "mysql://x",
    "REDIS_URL": "http://x",
    "BROKER": "kafka",
    "RABBITMQ_URL": "amqp://",
    "STATE_REDIS_URL": "amqp://localhost",
    "STATE_BACKEND": "disk",
    "REDIS_CLUSTER": "maybe",
    "REDIS_SENTINELS": "sentinel-without-port",
    "BROKER_HEARTBEAT_TIMEOUT_S": "0",
    "BROKER_MAINTENANCE_CHANCE": "1000001",
    "OVERPASS_URL": "ftp://x/api/interpreter",
    "OVERPASS_PROFILE": "fast",
    "OVERPASS_CONTACT": "me",
    "OVERPASS_USER_AGENT": "acme/1\x01",
    "OVERPASS_QUERY_TIMEOUT_S": "ten",
    "OVERPASS_MAXSIZE_BYTES": "0",
    "OVERPASS_MAX_ANSWER_BYTES": "1.5",
    "OVERPASS_HTTP_TIMEOUT_S": "-1",
    "ENRICH_QUEUE": "two words",
    "ENRICH_DEFAULT_TAGS": " , ",
    "ENRICH_MAX_AREA_DEG2": "nan",
    "ENRICH_MIN_TILE_DEG": "0",
    "ENRICH_MAX_TAGS": "0",
    "ENRICH_COVERAGE": "perhaps",
    "ENRICH_TILE_DEG": "0.07",
    "ENRICH_FRESH_S": "-1",
    "ENRICH_CLAIM_TTL_S": "0",
    "ENRICH_REFRESH_DIFF": "2",
    "ENRICH_DIFF_MAX_AGE_S": "-1",
    "ENRICH_SOURCE_WEIGHTS": "maps=0",
    "REFRESH_BUDGET_SHARE": "2",
    "ENRICH_SOURCE_MAX_SHARE": "refresh=1.5",
    "QUOTA_REQUESTS": "-5",
    "QUOTA_BYTES": "lots",
    "QUOTA_SERVER_S": "inf",
    "QUOTA_WINDOW_S": "0",
    "QUOTA_JITTER_S": "-1",
    "SEMAPHORE_PERMITS": "0",
    "OVERPASS_PUBLIC_PERMITS_OVERRIDE": "two",
    "SEMAPHORE_LEASE_S": "1",
    "SEMAPHORE_WAIT_S": "-1",
    "SEMAPHORE_RETRY_MIN_S": "-1",
    "SEMAPHORE_RETRY_MAX_S": "0.1",
    "BREAKER_FAILURE_THRESHOLD": "0",
    "BREAKER_COOLDOWN_S": "0",
    "RATE_LIMIT_PAUSE_S": "0",
    "HOLD_RECHECK_S": "0",
    "PACING_INTERVAL_S": "-1",
    "PACING_BURST": "0",
    "PACING_MIN_INTERVAL_S": "0",
    "RETRY_MAX": "-1",
    "RETRY_MIN_BACKOFF_S": "-1",
    "RETRY_MAX_BACKOFF_S": "1",
    "STORE_MAX_RETRIES": "-1",
    "OUTAGE_MAX_S": "0",
    "MESSAGE_MAX_BYTES": "100",
    "STAGE_CHUNK_BYTES": "10",
    "STAGE_TTL_S": "100",
}

#: Variables every non-blank value of which is usable (a blank one is the default).
ANY_VALUE = {"REDIS_SENTINEL_MASTER": "any name the Sentinels monitor"}

#: How each kind of message says what to do next.
ADVICE = ("expected ", "give ", "name ", "must exceed", "use printable")


@pytest.mark.parametrize("field", dataclasses.fields(Settings), ids=lambda field: field.name)
def test_every_field_is_declared_with_its_variable(field: dataclasses.Field[object]) -> None:
    declaration = dict(declared(Settings)).get(field.name)
    assert declaration is not None, f"Settings.{field.name} is not declared with setting(...)"
    assert declaration.env.isupper() and declaration.help, declaration


def test_no_variable_is_read_by_two_fields() -> None:
    twice = [env for env, count in Counter(row.env for row in TABLE).items() if count > 1]
    assert twice == []


def test_the_readme_table_is_the_declarations() -> None:
    written = settings_table.between_markers(README.read_text(encoding="utf-8"))
    assert written == settings_table.markdown(), (
        f"README.md's settings table differs from enrichment_actors/settings.py: run `{settings_table.REGENERATE}`"
    )


def test_the_regenerate_command_rewrites_only_the_table(tmp_path: Path) -> None:
    stale = README.read_text(encoding="utf-8").replace("| `BROKER` | `redis` |", "| `BROKER` | `kafka` |")
    (tmp_path / "README.md").write_text(stale, encoding="utf-8")
    assert settings_table.between_markers(stale) != settings_table.markdown()
    assert settings_table.main(["--write", str(tmp_path / "README.md")]) == 0
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == README.read_text(encoding="utf-8")


def test_the_table_says_which_process_needs_each_setting() -> None:
    rows = {line.split(" | ")[0].strip("|` "): line for line in settings_table.markdown().splitlines()[2:]}
    assert " | sender, worker | " in rows["BROKER"] and " | worker | " in rows["DATABASE_URL"]
    assert " | `REDIS_URL` | worker | " in rows["STATE_REDIS_URL"]  # a derived default is shown as such


def test_every_variable_has_a_bad_value_tested() -> None:
    assert sorted(BAD.keys() | ANY_VALUE.keys()) == sorted(row.env for row in TABLE)


@pytest.mark.parametrize(("env", "value"), BAD.items(), ids=list(BAD))
def test_a_bad_value_stops_with_one_line_naming_the_variable_and_what_to_do(env: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({env: value})
    message = str(raised.value)
    assert message.startswith(env) and "\n" not in message, message
    assert any(advice in message for advice in ADVICE), message


@pytest.mark.parametrize("env", ANY_VALUE)
def test_a_variable_that_takes_any_value_takes_it(env: str) -> None:
    assert env in {row.env for row in TABLE}
    field = next(name for name, row in declared(Settings) if row.env == env)
    assert getattr(load_settings({env: "some-name"}), field) == "some-name"


def test_the_sender_settings_are_the_fields_declared_for_it() -> None:
    declared_for_sender = [
        (field.name, field.type, field.repr)
        for field in dataclasses.fields(Settings)
        if field.name in dict(declared(Settings, sender=True))
    ]
    assert [
        (field.name, field.type, field.repr) for field in dataclasses.fields(SenderSettings)
    ] == declared_for_sender


def test_a_sender_reads_what_a_worker_reads() -> None:
    environ = {
        "BROKER": "RabbitMQ",
        "RABBITMQ_URL": "amqp://u:p@mq.example:5672/jobs",
        "ENRICH_QUEUE": "poi",
        "ENRICH_DEFAULT_TAGS": "amenity, shop",
        "ENRICH_MAX_TAGS": "3",
        "OVERPASS_CONTACT": "ops@example.org",
    }
    sender, worker = load_sender_settings(environ), load_settings(environ)
    assert sender == SenderSettings(
        **{field.name: getattr(worker, field.name) for field in dataclasses.fields(sender)}
    )
    assert (sender.broker, sender.queue, sender.default_tags, sender.max_tags) == (
        "rabbitmq",
        "poi",
        ("amenity", "shop"),
        3,
    )
    assert "u:p" not in repr(sender)


def test_a_sender_needs_no_worker_setting() -> None:
    # Every worker-only variable holds a bad value: sending does not care.
    sender_envs = {row.env for row in TABLE if row.sender}
    environ = {env: value for env, value in BAD.items() if env not in sender_envs}
    assert load_sender_settings(environ).broker == "redis"
    with pytest.raises(SettingsError):
        load_settings(environ)


@pytest.mark.parametrize("env", sorted({row.env for row in TABLE if row.sender}))
def test_a_bad_sender_setting_stops_the_sender_too(env: str) -> None:
    with pytest.raises(SettingsError, match=f"^{env}"):
        load_sender_settings({env: BAD[env]})


@pytest.mark.parametrize(
    "module", [enrichment_actors.settings_declaration, enrichment_actors.settings_values]
)
def test_the_examples_hold(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module, report=False)
    assert attempted > 0 and failed == 0
