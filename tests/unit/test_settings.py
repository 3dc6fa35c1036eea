"""Settings from the environment."""

from __future__ import annotations

import pytest

from enrichment_actors.settings import TABLE, SettingsError, load_settings


def test_defaults_work_with_an_empty_environment() -> None:
    settings = load_settings({})
    assert settings.database_url.startswith("sqlite:///")
    assert settings.overpass_url == "https://overpass-api.de/api/interpreter"
    assert settings.user_agent.startswith("overpass-enrichment/")
    # The query's own [timeout], the server's 15 s wait for a slot before it starts, and 10 s.
    assert settings.http_timeout_s == settings.query_timeout_s + 15 + 10
    assert settings.semaphore_lease_s > settings.http_timeout_s
    assert (settings.quota_requests, settings.quota_bytes, settings.quota_window_s) == (
        10_000,
        1 << 30,
        86_400,
    )
    assert (settings.semaphore_permits, settings.breaker_failure_threshold, settings.breaker_cooldown_s) == (
        2,
        3,
        60,
    )
    assert settings.rate_limit_pause_s >= 30


def test_user_agent_names_the_contact() -> None:
    assert "ops@example.org" in load_settings({"OVERPASS_CONTACT": "ops@example.org"}).user_agent
    assert load_settings({"OVERPASS_USER_AGENT": "acme/1 (ops@acme)"}).user_agent == "acme/1 (ops@acme)"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://x"),
        ("BROKER", "rabbitmq"),
        ("STATE_BACKEND", "disk"),
        ("OVERPASS_URL", "ftp://x/api/interpreter"),
        ("OVERPASS_URL", "https://overpass-api.de/api/"),
        ("OVERPASS_QUERY_TIMEOUT_S", "0"),
        ("OVERPASS_QUERY_TIMEOUT_S", "ten"),
        ("OVERPASS_HTTP_TIMEOUT_S", "-1"),
        ("SEMAPHORE_PERMITS", "0"),
        ("SEMAPHORE_LEASE_S", "1"),
        ("QUOTA_REQUESTS", "-5"),
        ("QUOTA_WINDOW_S", "0"),
        ("ENRICH_MAX_AREA_DEG2", "nan"),
        ("RETRY_MAX_BACKOFF_S", "1"),
        ("ENRICH_DEFAULT_TAGS", " , "),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    assert name in str(raised.value)


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [row.env for row in TABLE if f"`{row.env}`" not in readme]
    assert missing == []
