"""Named points where the fault harness (bench/faults.py) may kill the process. No TensorFlow.

`RETRAIN_KILL_AT=NAME` or `NAME:N` makes the N-th arrival (default the first) at `reached(NAME)`
end the process with SIGKILL, as a power cut or the kernel's OOM killer would: no handler,
no flush, no cleanup. Unset (always, outside the harness), `reached` is one comparison.
"""

from __future__ import annotations

import os
import signal

_WANTED = os.environ.get("RETRAIN_KILL_AT", "")
_NAME, _, _COUNT = _WANTED.partition(":")
_arrivals: dict[str, int] = {}


def reached(name: str) -> None:
    """Mark arrival at the point `name`; the harness's chosen arrival kills the process."""
    if not _WANTED or name != _NAME:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(_COUNT or 1):
        os.kill(os.getpid(), signal.SIGKILL)
