"""Moves this Python process's wall clock by ``SKEWED_CLOCK_S`` seconds: one host's clock in tests/support/hosts.py.

Imported at interpreter start when this directory is on ``PYTHONPATH``.
``time.time`` and ``time.time_ns`` (what Dramatiq, the product and logging
read) are moved; the monotonic clock is not (hosts' monotonic clocks are
unrelated anyway and only measure durations). libfaketime 0.9.10 cannot do
this for Python: with the monotonic clock faked, ``threading.Event().wait(1)``
never returns; without, ``time.sleep`` fails with EINVAL.
"""

import os
import time

_SKEW_S = float(os.environ.get("SKEWED_CLOCK_S", "0") or 0)
if _SKEW_S:
    _time, _time_ns, _skew_ns = time.time, time.time_ns, int(_SKEW_S * 1e9)
    time.time = lambda: _time() + _SKEW_S
    time.time_ns = lambda: _time_ns() + _skew_ns
