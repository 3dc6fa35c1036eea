"""The server time an Overpass call is charged: the operators' yardstick, as the client can see it.

The public operators judge users by the server time they use ("your fair
share would be at around 300 CPU seconds" a day: gods-eye-view issue 648).
A server sends its status line only when the query is done, and a query
waiting for a slot is held before it runs, so the time from the request
sent to the status line received is the server's time, slot wait included
(``Response.elapsed``: see :class:`~.overpass_client.FetchResult`). Without
a status line the client cannot see it: a query that was sent is charged
its whole ``[timeout]``, which it may run on the server after we gave up.
The quota's third budget (``cost``) counts it in milliseconds.
"""

from __future__ import annotations

import math

from enrichment_middleware.policy.quota import QuotaUsage

from .overpass_client import CallCost, FetchResult
from .overpass_responses import OverpassError

#: The quota's cost unit for server time: milliseconds (counters are whole numbers).
MS_PER_S = 1000


def server_seconds(outcome: FetchResult | OverpassError | CallCost, query_timeout_s: float) -> float:
    """The server seconds ``outcome`` (a fetch's result, or its error) is charged.

    Examples:
      >>> from enrichment_actors.overpass_responses import ClientTimeout, RateLimited
      >>> server_seconds(ClientTimeout("no status line"), query_timeout_s=25)  # the query runs on
      25.0
      >>> refused = RateLimited("429")
      >>> refused.server_s = 0.004
      >>> server_seconds(refused, query_timeout_s=25)
      0.004
    """
    if outcome.server_s is not None:
        return outcome.server_s
    if isinstance(outcome, FetchResult):
        return 0.0
    return float(query_timeout_s) if outcome.request_sent else 0.0


def server_milliseconds(outcome: FetchResult | OverpassError | CallCost, query_timeout_s: float) -> int:
    """The server time of ``outcome`` in whole milliseconds, rounded up: the budget is never
    charged less than the server spent (the quota's cost unit)."""
    return math.ceil(server_seconds(outcome, query_timeout_s) * MS_PER_S)


def server_time_line(usage: QuotaUsage) -> str:
    """The ``enrichment status`` line of a quota's server time: used, left, mean per call.

    Examples:
      >>> print(server_time_line(QuotaUsage("overpass", 0.0, 86_400.0, 40, 10_000, 0, -1, 120_500, 300_000, 2_000)))
        server    120.5 s used, 179.5 s left of 300 s, 3.01 s a call (about 59 calls left)
    """
    used = usage.cost_used / MS_PER_S
    mean = usage.cost_per_request / MS_PER_S
    if usage.cost_left is None:
        return f"  server    {used:g} s used, unlimited, {mean:.3g} s a call"
    left = usage.cost_left / MS_PER_S
    calls = int(left // mean) if mean > 0 else 0
    return (
        f"  server    {used:g} s used, {left:g} s left of {usage.cost_limit / MS_PER_S:g} s, "
        f"{mean:.3g} s a call (about {calls} calls left)"
    )
