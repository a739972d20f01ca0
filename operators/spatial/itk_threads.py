"""SimpleITK's process-wide default thread count, set for the duration of a ``with`` block.

Why: an ``ImageRegistrationMethod``'s own ``SetNumberOfThreads`` does not reach the metric's
threader; only SimpleITK's *global* default does. With more than one thread, Mattes mutual
information accumulates in a varying order and repeated registrations with the same seed
differ (in the last digits, occasionally more through another optimiser path). Reproducible
registrations therefore run inside :func:`global_thread_count` with one thread.

The global value belongs to the process: registrations running concurrently in several Python
threads (SimpleITK releases the GIL) share it. It is reference-counted: set by the first user,
restored by the last; a caller asking for another count waits until the current users are done.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import SimpleITK as sitk

__all__ = ["global_thread_count"]

_CHANGED = threading.Condition()
_users = 0
_value: int | None = None
_saved = 0


@contextmanager
def global_thread_count(n: int | None) -> Iterator[None]:
    """Set SimpleITK's process-wide default thread count to ``n`` inside the block.

    Parameters
    ----------
    n
        Number of threads; ``None`` leaves SimpleITK's settings alone (the block runs as is).

    Yields
    ------
    None
        While the block runs, ``sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == n``.
        The previous value is restored when the last concurrent user leaves.
    """
    if n is None:
        yield
        return
    global _users, _value, _saved
    with _CHANGED:
        _CHANGED.wait_for(lambda: _users == 0 or _value == int(n))
        if _users == 0:
            _saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            _value = int(n)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_value)
        _users += 1
    try:
        yield
    finally:
        with _CHANGED:
            _users -= 1
            if _users == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_saved)
                _value = None
            _CHANGED.notify_all()
