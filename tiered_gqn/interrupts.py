"""Ctrl-C and SIGTERM at any moment, without corrupting what is being written.

After `install()`, SIGINT and SIGTERM raise `Interrupted` (a
`KeyboardInterrupt`), so `finally` blocks (staging folders, temporary files)
run on either signal. Inside `deferred()` a signal is only recorded: code
that must not be cut in half (a checkpoint, a saved model) runs to its end,
and the interrupt is raised on leaving, however many signals arrived. Long
loops run deferred and poll `requested()` to stop at a clean point.
"""

import contextlib
import signal

_state = {"depth": 0, "pending": None}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _handler(signum, frame):
    del frame
    if _state["pending"] is None:
        _state["pending"] = signum
    if _state["depth"] == 0:
        raise Interrupted(signum)


def install():
    """SIGINT and SIGTERM raise `Interrupted` from now on (deferred inside `deferred()`)."""
    _state["pending"] = None
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def requested():
    """The signal number received inside `deferred()` and not yet raised, or None."""
    return _state["pending"]


@contextlib.contextmanager
def deferred():
    """Signals received inside are recorded, then raised as `Interrupted` on leaving.

    Nestable. Leaving by an exception does not add the interrupt on top of it.
    """
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if _state["depth"] == 0 and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        raise Interrupted(signum)
