"""The ``enrichment`` console script: enqueue, status, coverage, refresh, release-hold, demo, stub-overpass.

Failures a user can fix (an invalid job or setting, an unreachable Redis)
end in one line on stderr saying what to check, and a non-zero exit status;
never a traceback, and never a password.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from enrichment_middleware.policy.fair import FairPolicy

    from .coverage.ledger import Ledger, TileCoverage
    from .overpass_endpoints import Endpoint
    from .runtime import Runtime

#: Options whose value may start with a minus sign (southern and western hemispheres).
_SIGNED_OPTIONS = ("--bbox",)
_NEGATIVE_NUMBER = re.compile(r"-\.?\d")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DAY_S = 86400


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enrichment", description="Overpass POI enrichment on Dramatiq.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    enqueue = commands.add_parser("enqueue", help="send one enrich job")
    _add_bbox(enqueue)
    enqueue.add_argument(
        "--tag",
        action="append",
        dest="tags",
        metavar="KEY[=VALUE]",
        help="tag filter; repeat; default set if none",
    )

    commands.add_parser("status", help="live quota, breaker and permit state from the shared backend")

    coverage = commands.add_parser(
        "coverage", help="what the coverage ledger holds for the tiles of a box (reads the database only)"
    )
    _add_bbox(coverage)
    coverage.add_argument(
        "--tags",
        metavar="KEY[=VALUE],...",
        help="only this tag set, comma-separated (default: every tag set)",
    )

    refresh = commands.add_parser(
        "refresh", help="re-enqueue the stalest tiles (force), within REFRESH_BUDGET_SHARE of the daily quota"
    )
    refresh.add_argument(
        "--older-than",
        required=True,
        type=_duration,
        metavar="DURATION",
        help="refresh tiles fetched longer ago than this: 30s, 15m, 1h, 7d or plain seconds",
    )
    refresh.add_argument(
        "--limit",
        type=_count,
        metavar="N",
        help="most tiles per run (default and ceiling: the refresh budget of one run)",
    )
    refresh.add_argument(
        "--every",
        type=_interval,
        metavar="DURATION",
        help="run again after this long, until stopped (the Procfile's clock process)",
    )
    commands.add_parser("demo", help="run the main job end to end on embedded defaults")

    release = commands.add_parser(
        "release-hold", help="lift the hold a 406 or 403 put on an endpoint (every endpoint by default)"
    )
    release.add_argument(
        "endpoint", nargs="?", metavar="ENDPOINT", help="the endpoint's host[:port] (default: every endpoint)"
    )

    stub = commands.add_parser("stub-overpass", help="run the stand-in Overpass server")
    stub.add_argument("--port", type=int, default=8089)
    stub.add_argument("--host", default="127.0.0.1")
    stub.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    stub.add_argument(
        "--slots", type=int, default=2, help="rate limit reported by /api/status (0 = unlimited)"
    )

    args = parser.parse_args(_attach_signed_values(sys.argv[1:] if argv is None else argv))
    if args.command == "enqueue":
        return _fail_clearly(lambda: _enqueue(args.bbox, args.tags))
    if args.command == "status":
        return _fail_clearly(_status)
    if args.command == "coverage":
        return _fail_clearly(lambda: _coverage(args.bbox, args.tags))
    if args.command == "refresh":
        return _fail_clearly(lambda: _refresh(args.older_than, args.limit, args.every))
    if args.command == "demo":
        return _demo()
    if args.command == "release-hold":
        return _fail_clearly(lambda: _release_hold(args.endpoint))
    from .stub_overpass import serve_forever

    serve_forever(args.port, host=args.host, latency_s=args.latency, slots=args.slots)
    return 0


def _add_bbox(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--bbox", required=True, metavar="S,W,N,E", help="south,west,north,east in degrees (Overpass order)"
    )


def _attach_signed_values(argv: Sequence[str]) -> list[str]:
    """``--bbox -34.61,-58.39,...`` as ``--bbox=-34.61,-58.39,...``.

    argparse takes an argument that starts with ``-`` for an option, unless
    it is a plain negative number: a box south of the equator or west of
    Greenwich would be refused with "expected one argument".
    """
    args = list(argv)
    for i, arg in enumerate(args[:-1]):
        if arg in _SIGNED_OPTIONS and _NEGATIVE_NUMBER.match(args[i + 1]):
            args[i : i + 2] = [f"{arg}={args[i + 1]}", ""]
    return [arg for arg in args if arg != ""]


def _duration(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``7d`` or plain seconds, in seconds (argparse type).

    Examples:
      >>> _duration("7d"), _duration("1.5h"), _duration("90")
      (604800.0, 5400.0, 90.0)
    """
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a number of seconds, or with s, m, h or d (30s, 15m, 1h, 7d)"
        )
    return float(found[1]) * _UNIT_S[found[2]]


def _interval(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the interval must be longer than 0 s")
    return seconds


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _fail_clearly(command: Callable[[], int]) -> int:
    """Run ``command``; a settings error or an unreachable Redis, RabbitMQ or database becomes one line on stderr.

    Status 2 for a settings error, 1 for a server that cannot be reached.
    """
    import peewee
    import redis
    from dramatiq.errors import BrokerConnectionError

    from enrichment_middleware.backends.base import BackendUnavailable
    from enrichment_middleware.redaction import redact, redact_url

    from .settings import SettingsError

    try:
        status = command()
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not at exit
        return status
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # The reader took what it wanted (`enrichment status | head -5`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SettingsError as exc:
        print(f"enrichment: {exc}", file=sys.stderr)
        return 2
    except BackendUnavailable as exc:
        print(f"enrichment: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except peewee.PeeweeException as exc:
        url = _runtime().settings.database_url
        print(
            f"enrichment: the database at {redact_url(url)} cannot be used ({redact(_one_line(str(exc)), url)}). "
            "Check that the server is running and that DATABASE_URL points at it.",
            file=sys.stderr,
        )
        return 1
    except (redis.RedisError, BrokerConnectionError, ConnectionError) as exc:
        # The broker's own errors name no URL: say which one was used.
        settings = _runtime().settings
        if settings.broker == "rabbitmq" and not isinstance(exc, redis.RedisError):
            url, what, variable = settings.rabbitmq_url, "RabbitMQ", "RABBITMQ_URL (host, port, user, vhost)"
        elif settings.broker == "rabbitmq":
            url, what, variable = (
                settings.state_redis_url,
                "Redis",
                "STATE_REDIS_URL (host, port, password, TLS)",
            )
        else:
            url, what, variable = settings.redis_url, "Redis", "REDIS_URL (host, port, password, TLS)"
        reason = redact(_one_line(str(exc)), url)
        print(
            f"enrichment: {what} at {redact(url)} cannot be reached ({reason}). "
            f"Check that the server is running and that {variable} points at it.",
            file=sys.stderr,
        )
        return 1


def _runtime() -> Runtime:
    """The product in this process: built from the environment on first use (SettingsError says what to fix).

    Each command is a process of the product's own, as a worker is: its
    broker is made Dramatiq's global broker (:func:`.worker.start`).
    """
    from .runtime import installed
    from .settings import check_startable, load_settings
    from .worker import start

    return installed() or start(check_startable(load_settings()))


def _stdout_closed() -> bool:
    """Whether the reader of our standard output has gone (a pipe whose read end is closed)."""
    import select

    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse_bbox(bbox_text: str) -> dict[str, float] | None:
    """``S,W,N,E`` as the actors' box; None (saying why on stderr) unless four numbers."""
    try:
        south, west, north, east = (float(part) for part in bbox_text.split(","))
    except ValueError:
        print(f"--bbox {bbox_text!r}: expected four numbers south,west,north,east", file=sys.stderr)
        return None
    return {"south": south, "west": west, "north": north, "east": east}


def _enqueue(bbox_text: str, tags: list[str] | None) -> int:
    from .jobs import InvalidJob, validate_job
    from .sender import enrich

    runtime = _runtime()
    bbox = _parse_bbox(bbox_text)
    if bbox is None:
        return 2
    try:
        validate_job(bbox, tags, limits=runtime.job_limits)
    except InvalidJob as exc:
        print(f"Not enqueued: {exc}", file=sys.stderr)
        return 2
    message = enrich.send(bbox=bbox, tags=tags)
    print(f"Enqueued enrich job {message.message_id} on queue {message.queue_name!r}.")
    return 0


def _status() -> int:
    from .queues import queue_sizes

    runtime = _runtime()

    parked = runtime.retries.parking.count() if runtime.retries.parking else 0
    for endpoint in runtime.endpoints:
        for line in _endpoint_status(runtime, endpoint):
            print(line)
    print(f"parked jobs  {parked}")
    # Redis counts waiting, delayed and in-flight messages; RabbitMQ (AMQP) the waiting and delayed ones.
    for queue, size in queue_sizes(runtime.broker):
        print(f"queue {queue!r}  {size} messages ({runtime.settings.broker})")
    return 0


def _coverage(bbox_text: str, tags_text: str | None) -> int:
    """What the ledger holds for the tiles of a box: one line per (tile, tag set), then a summary."""
    from .coverage.tiles import Tile, tagset_key, tile_units, tiles_of
    from .jobs import InvalidJob, validate_job

    runtime = _runtime()

    bbox = _parse_bbox(bbox_text)
    if bbox is None:
        return 2
    tags = None if tags_text is None else [tag.strip() for tag in tags_text.split(",")]
    try:
        job = validate_job(bbox, tags, limits=runtime.job_limits)
    except InvalidJob as exc:
        print(f"enrichment coverage: {exc}", file=sys.stderr)
        return 2
    settings = runtime.settings
    where = _database_read(settings.database_url)
    if where is None:
        return 1
    tiles = [tile.id for tile in tiles_of(job.bbox, tile_units(settings.tile_deg))]
    store = runtime.store()
    store.ensure_schema()
    rows = store.ledger.tiles(tiles)
    if tags is not None:
        wanted = tagset_key(job.tags)
        rows = [row for row in rows if row.tagset == wanted]
    now = _utcnow()
    fresh_tiles: set[str] = set()
    for row in rows:
        age_s = (now - row.fetched_at).total_seconds()
        fresh = age_s <= settings.fresh_s
        if fresh:
            fresh_tiles.add(row.tile)
        print(
            f"{row.tile}  {Tile.parse(row.tile).bbox.ql()}  {','.join(row.tags)}  "
            f"fetched {_age(age_s)} ago ({'fresh' if fresh else 'stale'})  "
            f"osm_base {row.osm_base or '-'}  {row.pois} POIs  {row.calls:.2f} calls"
        )
    covered = {row.tile for row in rows}
    print(
        f"{len(covered)} of {len(tiles)} tiles covered, {len(fresh_tiles)} fresh, "
        f"{sum(row.pois for row in rows)} POIs, {sum(row.calls for row in rows):.2f} calls spent, in {where}"
    )
    return 0


def _database_read(url: str) -> str | None:
    """The database ``url`` names, as shown to the user; None (saying why) for a SQLite file that is not there.

    A relative ``sqlite:///name`` is relative to the current directory: run
    elsewhere, it would create an empty database and report no tile at all.
    """
    from enrichment_middleware.redaction import redact_url

    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return redact_url(url)
    path = os.path.abspath(url[len("sqlite:///") :])
    if not os.path.exists(path):
        print(
            f"enrichment coverage: there is no database at {path} (DATABASE_URL={url}, relative to the "
            "current directory). Run it where the workers run, or set DATABASE_URL to their database.",
            file=sys.stderr,
        )
        return None
    return f"sqlite:///{path}"


def _utcnow() -> dt.datetime:
    """Now in UTC, naive, as the ledger stores its times."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _age(seconds: float) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``12 d``: whole units, rounded down."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", _DAY_S), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _refresh_budget(share: float, quota_requests: int, interval_s: float) -> int:
    """Most tiles one refresh run may send: ``share`` of the daily ``quota_requests``, over one interval.

    Examples:
      >>> _refresh_budget(0.2, 10_000, 86400), _refresh_budget(0.2, 10_000, 3600)
      (2000, 84)
    """
    # Rounded first: 0.07 * 100 is 7.000000000000001, whose ceiling would be 8.
    return math.ceil(round(share * quota_requests * interval_s / _DAY_S, 6))


def _refresh(older_than_s: float, limit: int | None, every_s: float | None) -> int:
    """Send the stalest tiles again (``force=True``); once, or every ``every_s`` until SIGTERM or Ctrl-C."""
    from .coverage.tiles import Tile, tile_units
    from .sender import enrich

    runtime = _runtime()

    settings = runtime.settings
    if not settings.coverage:
        print(
            "enrichment refresh: ENRICH_COVERAGE is false, so no fetch updates the coverage ledger "
            "and the same tiles would be sent on every run; set ENRICH_COVERAGE=true.",
            file=sys.stderr,
        )
        return 2
    interval_s = _DAY_S if every_s is None else every_s
    share = settings.source_shares["refresh"]
    budget = _refresh_budget(share, settings.quota_requests, interval_s)
    if limit is not None and limit > budget:
        print(
            f"enrichment refresh: --limit {limit} is above the refresh budget of {budget} tiles per run "
            f"(REFRESH_BUDGET_SHARE={share:g} of QUOTA_REQUESTS="
            f"{settings.quota_requests} a day, over {interval_s:g} s); sending at most {budget}.",
            file=sys.stderr,
        )
    limit = budget if limit is None else min(limit, budget)
    units = tile_units(settings.tile_deg)
    store = runtime.store()

    def run() -> None:
        store.ensure_schema()
        cutoff = _utcnow() - dt.timedelta(seconds=older_than_s)
        stale = _stale_count(store.ledger, cutoff, units)
        rows = _stalest_on_grid(store.ledger, cutoff, limit, units)
        for row in rows:
            enrich.send(
                bbox=Tile.parse(row.tile).bbox.as_dict(), tags=list(row.tags), force=True, source="refresh"
            )
        print(f"refresh: sent {len(rows)} of {stale} stale tiles (limit {limit})", flush=True)

    if every_s is None:
        run()
        return 0
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while not stop.is_set():
            run()
            stop.wait(every_s)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _stale_count(ledger: Ledger, cutoff: dt.datetime, units: int) -> int:
    """How many (tile, tag set) rows of the current grid were fetched before ``cutoff``."""
    model = ledger.coverage
    return int(model.select().where((model.fetched_at < cutoff) & model.tile.startswith(f"{units}:")).count())


def _stalest_on_grid(ledger: Ledger, cutoff: dt.datetime, limit: int, units: int) -> list[TileCoverage]:
    """Up to ``limit`` of the stalest rows, of the current grid only.

    Rows written under another ``ENRICH_TILE_DEG`` are passed over: a fetch
    now files its answer under this grid's tiles, so they would never become
    fresh and would be sent again on every run.
    """
    prefix = f"{units}:"
    asked = limit
    while True:
        rows = ledger.stalest(cutoff, asked)
        ours = [row for row in rows if row.tile.startswith(prefix)]
        if len(ours) >= limit or len(rows) < asked:
            return ours[:limit]
        asked *= 2


def _sources_status(room: FairPolicy) -> list[str]:
    """The fair room's lines of ``enrichment status``: seats, then each source's weight, waiting jobs,
    calls this quota window and cap."""
    counts = room.counts()
    limits = room.limits
    lines = [f"sources {room.name!r}  {counts.seated} of {limits.seats} seats taken"]
    for source in sorted({*limits.weights, *limits.caps, *counts.waiting, *counts.calls}):
        cap = limits.caps.get(source)
        lines.append(
            f"  source {source}  weight {limits.weight(source):g}, {counts.waiting.get(source, 0)} waiting, "
            f"{counts.calls.get(source, 0)} calls this window" + ("" if cap is None else f" (cap {cap})")
        )
    return lines


def _endpoint_status(runtime: Runtime, endpoint: Endpoint) -> list[str]:
    """What ``enrichment status`` says of one endpoint: its profile and limits, then its live state.

    Quota, breaker and permits under the lines they always had (scripts read
    them); then the pause or hold (the hold line names the endpoint and how to
    lift it) and the pacing.
    """
    from .overpass_endpoints import describe
    from .routing import EndpointReading, readiness
    from .server_time import server_time_line

    policy = endpoint.policy
    usage = runtime.quota.policies[policy].usage()
    breaker = runtime.breaker.policies[policy].state()
    semaphore = runtime.semaphore.policies[policy]
    pause = runtime.pause.policies[policy].status()
    pacing = runtime.pacing.policies[policy].status()
    now = runtime.backend.now()

    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def left(limit: int, used: int) -> str:
        return "unlimited" if limit < 0 else f"{max(0, limit - used)} left of {limit}"

    kind = " (a known public instance)" if endpoint.listed else ""
    lines = [
        f"endpoint {endpoint.name}  {endpoint.profile.value}{kind}, policy {policy!r}",
        f"  limits    {describe([endpoint]).split(': ', 1)[1]}",
        f"quota {policy!r}  window {when(usage.window_start)} .. {when(usage.window_end)}",
        f"  requests  {usage.requests_used} used, {left(usage.requests_limit, usage.requests_used)}",
        f"  bytes     {usage.bytes_used} used, {left(usage.bytes_limit, usage.bytes_used)}",
        server_time_line(usage),
    ]
    probe = f", next probe after {when(breaker.open_until)}" if breaker.status.value == "open" else ""
    lines.append(
        f"breaker {policy!r}  {breaker.status.value} ({breaker.failures} consecutive failures{probe})"
    )
    lines.append(
        f"semaphore {policy!r}  {semaphore.in_use()} of {semaphore.effective_permits()} permits in use"
    )
    lines += _sources_status(runtime.fair.policies[policy])
    if pause.held:
        lines.append(
            f"pause {policy!r}  {endpoint.name} HELD ({pause.hold_reason or pause.reason}): no calls, jobs wait; "
            f"fix the settings and restart the workers, or run `enrichment release-hold {endpoint.name}`"
        )
    if pause.paused_until is not None:
        lines.append(
            f"pause {policy!r}  paused until {when(pause.paused_until)} ({pause.remaining_s:.0f} s left, "
            f"{pause.pause_reason or pause.reason})"
        )
    elif not pause.held:
        lines.append(f"pause {policy!r}  not paused")
    if pacing.interval_s > 0:
        lines.append(
            f"pacing {policy!r}  one call every {pacing.interval_s:.2f} s (burst {pacing.burst}), "
            f"next free slot in {pacing.reserved_s:.1f} s"
        )
    else:
        lines.append(f"pacing {policy!r}  off")
    if len(runtime.endpoints) > 1:
        ready = readiness(endpoint, EndpointReading(pause, breaker, usage), now)
        state = "ready" if ready.reason is None else f"waits ({ready.reason})"
        lines.append(f"route  {endpoint.name} {state}")
    return lines


def _release_hold(endpoint: str | None) -> int:
    """Lift the hold of ``endpoint`` (every endpoint when None), whatever settings set it."""
    from .actors import hold_targets

    _runtime()
    targets = hold_targets()
    if endpoint is not None and endpoint not in targets:
        known = ", ".join(sorted(targets))
        print(f"enrichment: no endpoint named {endpoint!r}; the endpoints are: {known}.", file=sys.stderr)
        return 2
    for name, policy in sorted(targets.items()):
        if endpoint is not None and name != endpoint:
            continue
        status = policy.status()
        if policy.release_hold():
            print(f"{name}: hold lifted (it was held: {status.hold_reason or 'no reason given'}).")
        else:
            print(f"{name}: not held; nothing to do.")
    return 0


def _demo() -> int:
    """Re-run as ``python -m enrichment_actors.demo`` with embedded defaults for what the user did not set.

    The demo reads its settings from the environment when it builds the
    runtime, so the defaults go into the environment of a fresh interpreter.
    """
    env = dict(os.environ)
    if "REDIS_URL" not in env and "STATE_REDIS_URL" not in env:
        # No Redis: the in-process stub broker (unless BROKER=rabbitmq names the
        # user's RabbitMQ) and the state in this one process.
        env.setdefault("BROKER", "stub")
        env.setdefault("STATE_BACKEND", "memory")
    env.setdefault("DATABASE_URL", "sqlite:///" + os.path.abspath("var/demo.sqlite3"))
    if "OVERPASS_URL" not in env:
        env["ENRICHMENT_DEMO_STUB_PORT"] = str(_free_port())
        env["OVERPASS_URL"] = f"http://127.0.0.1:{env['ENRICHMENT_DEMO_STUB_PORT']}/api/interpreter"
        env.setdefault("OVERPASS_CONTACT", "demo@localhost")
    # Short backoffs so the demo shows a retry without a long wait.
    env.setdefault("RETRY_MIN_BACKOFF_S", "0.5")
    env.setdefault("RETRY_MAX_BACKOFF_S", "5")
    # Small tiles, so that the demo's too-large query is split rather than failed.
    env.setdefault("ENRICH_MIN_TILE_DEG", "0.001")
    os.makedirs("var", exist_ok=True)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "enrichment_actors.demo"], env)
    return 0  # pragma: no cover - execve does not return


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    sys.exit(main())
