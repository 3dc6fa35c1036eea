"""Settings from the environment."""

from __future__ import annotations

import pytest

from enrichment_actors.settings import TABLE, SettingsError, check_startable, load_settings


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
        10**9,
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


@pytest.mark.parametrize("contact", ["me", "ops", "example.org", "@example.org", "ops@", "http://"])
def test_a_contact_that_identifies_no_one_is_refused(contact: str) -> None:
    with pytest.raises(SettingsError, match=r"OVERPASS_CONTACT=.*e-mail address .* or a URL"):
        load_settings({"OVERPASS_CONTACT": contact})


@pytest.mark.parametrize("contact", ["ops@example.org", "tests@localhost", "https://example.org/contact"])
def test_an_e_mail_address_or_a_url_identifies(contact: str) -> None:
    assert contact in load_settings({"OVERPASS_CONTACT": contact}).user_agent


def test_without_a_contact_the_user_agent_names_no_placeholder() -> None:
    # The old default, "(+contact: unset)", was one stock User-Agent shared by every deployment.
    user_agent = load_settings({"OVERPASS_URL": "http://10.0.0.5/api/interpreter"}).user_agent
    assert "unset" not in user_agent and "contact" not in user_agent


@pytest.mark.parametrize(
    ("environ", "startable"),
    [
        ({}, False),  # the default URL is the public overpass-api.de
        ({"OVERPASS_CONTACT": "ops@example.org"}, True),
        ({"OVERPASS_CONTACT": "  "}, False),
        ({"OVERPASS_URL": "http://127.0.0.1:9/api/interpreter"}, True),  # private: no contact needed
        ({"OVERPASS_URL": "http://127.0.0.1:9/api/interpreter", "OVERPASS_PROFILE": "public"}, False),
        (
            {
                "OVERPASS_URL": "http://127.0.0.1:9/api/interpreter",
                "OVERPASS_PROFILE": "public",
                "OVERPASS_CONTACT": "tests@localhost",
            },
            True,
        ),
        ({"OVERPASS_USER_AGENT": "acme/1"}, False),  # a User-Agent of one's own does not replace the contact
    ],
)
def test_a_public_endpoint_does_not_start_without_a_contact(environ: dict[str, str], startable: bool) -> None:
    settings = load_settings(environ)  # tools that only read state (status) load them all the same
    if startable:
        assert check_startable(settings) is settings
        return
    with pytest.raises(SettingsError) as raised:
        check_startable(settings)
    message = str(raised.value)
    assert "OVERPASS_CONTACT" in message and "406" in message and "do not start" in message


@pytest.mark.parametrize(
    "urls",
    [
        "https://overpass-api.de/api/interpreter,https://overpass.kumi.systems/api/interpreter",
        "https://overpass-api.de/api/interpreter,http://127.0.0.1:9/api/interpreter",
        "http://10.0.0.1/api/interpreter,https://lz4.overpass-api.de/api/interpreter",
    ],
)
def test_a_public_endpoint_among_several_is_refused_quoting_the_rule(urls: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"OVERPASS_URL": urls, "OVERPASS_CONTACT": "ops@example.org"})
    assert "one user, one script" in str(raised.value)
    assert "drolbr/Overpass-API issue 791" in str(raised.value)


def test_public_profile_on_loopback_makes_several_endpoints_refused() -> None:
    urls = "http://127.0.0.1:9/api/interpreter,http://127.0.0.1:10/api/interpreter"
    assert len(load_settings({"OVERPASS_URL": urls}).endpoints) == 2
    with pytest.raises(SettingsError, match="one user, one script"):
        load_settings({"OVERPASS_URL": urls, "OVERPASS_PROFILE": "public"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://x"),
        ("BROKER", "kafka"),
        ("RABBITMQ_URL", "redis://localhost:6379/0"),
        ("RABBITMQ_URL", "amqp://"),
        ("STATE_REDIS_URL", "amqp://localhost"),
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
        ("OVERPASS_URL", "https://a.example/api/interpreter,ftp://b/api/interpreter"),
        ("OVERPASS_URL", " , "),
        (
            "OVERPASS_URL",
            "http://a.example/api/interpreter,http://A.example/x/api/interpreter",
        ),  # one name twice
        ("OVERPASS_PROFILE", "private"),  # nothing makes a public instance private
        ("OVERPASS_PROFILE", "fast"),
        ("OVERPASS_PUBLIC_PERMITS_OVERRIDE", "0"),
        ("OVERPASS_PUBLIC_PERMITS_OVERRIDE", "two"),
        ("RATE_LIMIT_PAUSE_S", "0"),
        ("RATE_LIMIT_PAUSE_S", "10"),  # below the 30 s the public instance's operators ask for
        ("PACING_INTERVAL_S", "-1"),
        ("PACING_BURST", "0"),
        ("PACING_MIN_INTERVAL_S", "0"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    assert name in str(raised.value)


def test_a_short_pause_after_a_429_is_allowed_off_the_public_instances() -> None:
    # The tests' stand-in server, even under OVERPASS_PROFILE=public: only a listed host insists on 30 s.
    environ = {"OVERPASS_URL": "http://127.0.0.1:9/api/interpreter", "RATE_LIMIT_PAUSE_S": "0.5"}
    assert load_settings(environ).rate_limit_pause_s == 0.5
    assert load_settings({**environ, "OVERPASS_PROFILE": "public"}).rate_limit_pause_s == 0.5


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [row.env for row in TABLE if f"`{row.env}`" not in readme]
    assert missing == []


def test_the_state_lives_beside_the_broker_unless_put_elsewhere() -> None:
    # RabbitMQ holds only the queues: the fleet's state is in Redis, REDIS_URL's unless STATE_REDIS_URL says.
    rabbit = {"BROKER": "rabbitmq", "RABBITMQ_URL": "amqp://u:p@mq.example:5672/jobs"}
    assert load_settings(rabbit).state_redis_url == "redis://localhost:6379/0"
    assert load_settings({**rabbit, "REDIS_URL": "redis://r:6379/1"}).state_redis_url == "redis://r:6379/1"
    settings = load_settings({**rabbit, "STATE_REDIS_URL": "redis://state:6379/2"})
    assert (settings.broker, settings.rabbitmq_url, settings.state_redis_url) == (
        "rabbitmq",
        "amqp://u:p@mq.example:5672/jobs",
        "redis://state:6379/2",
    )
    assert "u:p" not in repr(settings)
