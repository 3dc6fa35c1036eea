"""Loaded into benchmark worker processes to turn the semaphore's hand-off off: the comparison "as before".

With ``handoff_max=0`` every released permit goes back through Redis (a
waiter wakes from ``BLPOP`` and takes the lease itself), as the semaphore
worked before permits were handed straight to a waiting thread. Only the
benchmarks load it (``dramatiq enrichment_actors.worker:build tests.bench.no_handoff``),
after the runtime is built.
"""

from __future__ import annotations

from dataclasses import replace

from enrichment_actors.runtime import current

runtime = current()

for policy in runtime.semaphore.policies.values():
    # The limits are fixed once a policy is made; a benchmark-only switch reaches in.
    policy._limits = replace(policy.limits, handoff_max=0)
