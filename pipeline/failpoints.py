"""Test-only fault injection: a process that handles a named item dies with SIGSEGV.

No real media file or prompt is known to crash decord, PIL, the processor or the model
reliably, so the tests make one. Each variable holds comma-separated substrings; the process
handling an item whose URI contains one of them kills itself with SIGSEGV, as a native bug
would:

- `IWP_FAILPOINT_DECODE_CRASH`: the decode child process (`pipeline.sandbox`);
- `IWP_FAILPOINT_PREPROCESS_CRASH`: the preprocess child process (`pipeline.sandbox`);
- `IWP_FAILPOINT_PLAN_CRASH`: the clip planner's child process (`pipeline.sandbox`);
- `IWP_FAILPOINT_MODEL_CRASH`: the model actor, before it runs a model batch holding the item.

`IWP_FAILPOINT_MODEL_HANG` makes the model actor block forever instead, as a hung kernel
would, on a model batch holding a named item. Unset (as in every real run) these do nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable

CRASH_ENV = "IWP_FAILPOINT_DECODE_CRASH"
PREPROCESS_CRASH_ENV = "IWP_FAILPOINT_PREPROCESS_CRASH"
PLAN_CRASH_ENV = "IWP_FAILPOINT_PLAN_CRASH"
MODEL_CRASH_ENV = "IWP_FAILPOINT_MODEL_CRASH"
MODEL_HANG_ENV = "IWP_FAILPOINT_MODEL_HANG"
_ENV = {"decode": CRASH_ENV, "preprocess": PREPROCESS_CRASH_ENV, "plan": PLAN_CRASH_ENV, "model": MODEL_CRASH_ENV}


def _named(env: str, uris: Iterable[str]) -> bool:
    names = [n for n in os.environ.get(env, "").split(",") if n]
    return bool(names) and any(n in str(uri) for uri in uris for n in names)


def crash_if_named(stage: str, uris: Iterable[str]) -> None:
    """Die with SIGSEGV if `stage`'s failpoint names one of these URIs."""
    if _named(_ENV[stage], uris):
        os.kill(os.getpid(), signal.SIGSEGV)


def hang_if_named(uris: Iterable[str]) -> None:
    """Never return if the model hang failpoint names one of these URIs."""
    if _named(MODEL_HANG_ENV, uris):
        threading.Event().wait()
