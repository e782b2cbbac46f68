"""Let torch run inside the systemd sandbox.

MemoryDenyWriteExecute= (a prctl(PR_SET_MDWE) or seccomp rule) forbids the writable-executable pages
that oneDNN's JIT builds its kernels in: torch then fails with "could not create a primitive". When the
process runs under that rule we turn oneDNN off, and torch's plain CPU kernels serve instead.
"""

from __future__ import annotations

import ctypes
import logging
import mmap

log = logging.getLogger(__name__)

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, arg, 0, 0, 0)


def write_execute_denied() -> bool:
    """Try the very mapping oneDNN needs: systemd enforces the rule by prctl or by seccomp, and both refuse it."""
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        return True
    page.close()
    return False


def deny_write_execute() -> bool:
    """Impose MemoryDenyWriteExecute on this process ourselves; tests use it to mimic the unit."""
    return _prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) == 0


def adapt_torch() -> None:
    import torch

    if write_execute_denied():
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a ContextProp: setting it sets the flag
        log.info("MemoryDenyWriteExecute is in force: oneDNN's JIT is off, plain CPU kernels serve")
