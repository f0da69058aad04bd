"""Test-only fault injection for the decode child process (`pipeline.sandbox`).

No real media file is known to crash decord or PIL reliably, so the tests make one:
`IWP_FAILPOINT_DECODE_CRASH=name1,name2` makes the decode child kill itself with SIGSEGV,
as a decoder bug would, whenever the item's URI contains one of those strings. Unset (as
in every real run) this does nothing.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "IWP_FAILPOINT_DECODE_CRASH"


def before_decode(args: tuple) -> None:
    """`args` are the decode call's arguments; the first is the item's URI."""
    names = [n for n in os.environ.get(CRASH_ENV, "").split(",") if n]
    if names and args and any(n in str(args[0]) for n in names):
        os.kill(os.getpid(), signal.SIGSEGV)
