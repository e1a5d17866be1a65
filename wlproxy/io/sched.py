"""What a half asks of the kernel's scheduler: latency for messages, and
patience for pixels.

With ``--sched-slice`` a half runs with a short slice (``fl_sched_slice``), so
it gets the CPU soon after a client or the link wakes it, even while a client
keeps that CPU busy drawing.  Pixel work is the opposite case: a 1080p frame is
milliseconds of copying into the link, and a client this half wakes meanwhile
with a reply (a ``wl_display.sync`` done, an input event) should not wait for
all of it.  EEVDF lets a woken task preempt the running one at once when its
slice is shorter; otherwise the woken client waits until this half sleeps or
a tick comes (4 ms at HZ=250).  So for pixel work the half takes a longer
slice (``pixel_work``: 3 ms, longer than a client's default), and it asks for
the short slice again once the link writer has nothing left to write
(``pixels_done``).  Not much longer: with 10 ms, a CPU-bound process on the
same CPU kept winning the CPU from the half's copy and from its replies (the
interactive p90 7 ms, the stream down from 39 to 31 frames/s).

The link writer also yields before a slice of one client's pixels when
another client was sent something since the previous slice
(``LinkSession._others_woken``): that client may be waiting to run.  Only
then: a CPU-bound neighbour would take every turn offered, and large frames
took twice as long next to one when every slice yielded.
"""

from __future__ import annotations

import logging
import os

from wlproxy._codec import lib

log = logging.getLogger("wlproxy.sched")

_short = 0  # µs: the slice asked for, 0: the kernel's default
_long = False  # in pixel work, on LONG_SLICE
LONG_SLICE = 3_000  # µs: above a client's default slice (1.4 ms on these 2-CPU machines)


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


def pixel_work() -> None:
    """Pixel work follows: the long slice (while a short one was asked for)."""
    global _long
    if _short and not _long:
        lib.fl_sched_slice(LONG_SLICE)
        _long = True


def pixels_done() -> None:
    """The pixel work is written: the short slice again."""
    global _long
    if _long:
        lib.fl_sched_slice(_short)
        _long = False
