"""Makes every Python process the test suite starts read time.monotonic() as a machine booted seconds ago.

CLOCK_MONOTONIC counts from boot, so code that takes 0.0 for "long ago" works on a machine up for hours and
waits on one that booted minutes ago (issue #21: a fresh CI runner failed the suite). tests/conftest.py
puts this folder first on PYTHONPATH and sets FRESH_BOOT_MONOTONIC_SHIFT; every process, the test process
and the daemons it starts, subtracts the same shift, so their clocks still agree with one another.
"""

import os
import time

_shift = os.environ.get("FRESH_BOOT_MONOTONIC_SHIFT")
if _shift and not getattr(time.monotonic, "fresh_boot", False):
    _shift_s = float(_shift)
    _real, _real_ns = time.monotonic, time.monotonic_ns

    def monotonic() -> float:
        return _real() - _shift_s

    def monotonic_ns() -> int:
        return _real_ns() - int(_shift_s * 1e9)

    monotonic.fresh_boot = True
    time.monotonic, time.monotonic_ns = monotonic, monotonic_ns
