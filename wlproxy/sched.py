"""What a half asks of the kernel's scheduler: latency for messages, and
patience for pixels.

With ``--sched-slice`` a half runs with a short slice (``fl_sched_slice``), so
it gets the CPU soon after a client or the link wakes it, even while a client
keeps that CPU busy drawing.  Pixel work is the opposite case: a 1080p frame is
milliseconds of copying into the link, and a client this half just woke with a
reply (a ``wl_display.sync`` done, an input event) should not wait for all of
it.  So before pixel work the half takes the kernel's default slice back and
yields the CPU (``give_way``), and it asks for the short slice again once the
link writer has nothing left to write (``pixels_done``).  At HZ=250 the kernel
would otherwise decide only at the next tick, up to 4 ms later.
"""

from __future__ import annotations

import logging
import os

from wlproxy._codec import lib

log = logging.getLogger("wlproxy.sched")

_short = 0  # µs: the slice asked for, 0: the kernel's default
_long = False  # in pixel work: on the default slice


def short_slice(usec: int) -> None:
    """Ask for a scheduler slice of ``usec`` from now on; 0: leave the kernel's default."""
    global _short, _long
    _short, _long = 0, False
    if usec <= 0:
        return
    rc = lib.fl_sched_slice(usec)
    if rc < 0:
        log.info("the kernel's default scheduler slice stays (%s)", os.strerror(-rc))
    else:
        _short = usec
        log.debug("scheduler slice of %d µs", usec)


def give_way() -> None:
    """Pixel work follows: the default slice (while a short one was asked
    for), and whoever is waiting for this CPU runs first."""
    global _long
    if _short and not _long:
        lib.fl_sched_slice(0)
        _long = True
    os.sched_yield()


def pixels_done() -> None:
    """The pixel work is written: the short slice again."""
    global _long
    if _long:
        lib.fl_sched_slice(_short)
        _long = False
