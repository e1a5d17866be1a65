"""One end of a link: hello, channels, credits and pipes (both halves).

Subclasses add their own frame types (``handle_frame``) and decide what a
channel is.  A protocol violation by the peer drops the whole link with a
log line; nothing else in the process is affected.
"""

from __future__ import annotations

import logging
import os

from wlproxy.core import link
from wlproxy._codec import ffi, lib
from wlproxy.io.linkio import LinkReader, LinkWriter
from wlproxy.logs import audit
from wlproxy.io.loop import Loop
from wlproxy.io.pipes import Pipes

log = logging.getLogger("wlproxy.session")

# WLPROXY_FAST_PATHS=off: every C fast path off (C's loop reading links and
# local sockets, the link scan, read-and-forward, the guest's frame
# application); the codec still validates everything.  For comparing.
FAST_PATHS = os.environ.get("WLPROXY_FAST_PATHS", "on") != "off"

DEFAULT_WINDOW = 1 << 18
SCAN_SLOTS = 64     # channels the C link scan knows (by id modulo this); the others go through Python
SCAN_RECORDS = 256
SCAN_POOLS = 256    # pools the C link scan writes SHM_DATA to; more go through Python
# the C scan knows these frame types by number
assert (lib.FP_LINK_DATA, lib.FP_LINK_CREDIT, lib.FP_LINK_SHM_DATA) == (link.DATA, link.CREDIT, link.SHM_DATA)


class LinkSession:
    side = "?"
    accept: frozenset[int] = frozenset()
    pipe_id_base = 1

    def __init__(self, loop: Loop, fd: int, *, name: str, limits: link.Limits | None = None,
                 window: int = DEFAULT_WINDOW, vm: str = "", fast: bool | None = None):
        self.loop = loop
        self.fast = FAST_PATHS if fast is None else fast  # the C fast paths (see FAST_PATHS)
        self.fd = fd
        self.name = name
        self.vm = vm
        self.limits = limits or link.Limits()
        self.window = window
        self.peer_window = 0
        self.channels: dict = {}
        self.closed = False
        os.set_blocking(fd, False)  # the C read paths write to it too: never wait in there
        self.writer = LinkWriter(loop, fd, self._io_error)
        self.writer.others_woken = self._others_woken
        self._sends_seen: dict[int, int] = {}
        self.decoder = link.LinkDecoder(self.limits, accept=self.accept)
        # the C link scan: DATA and CREDIT of channels that need no Python, one call per read
        self._slots = ffi.new("struct fp_chan[]", SCAN_SLOTS)
        self._slot_ch: list = [None] * SCAN_SLOTS
        self._scan_state = ffi.new("struct fp_scan *")
        self._scan_state.max_data = self.limits.max_data
        self._scan_recs = ffi.new("struct wlc_rec[]", SCAN_RECORDS)
        self._scan_recs_buf = memoryview(ffi.buffer(self._scan_recs))
        self._corked: list = []  # local sockets held until the end of this loop turn
        self._pools_c = ffi.new("struct fp_pool *[]", SCAN_POOLS)  # pools the scan writes SHM_DATA to
        self._pools: list = []
        self._scan_state.pools = self._pools_c
        self._scan_state.max_shm = self.limits.max_shm_chunk if link.SHM_DATA in self.accept else 0
        self.reader = LinkReader(loop, fd, self.decoder, self._events, self._io_error, self.fail,
                                 resolve=self.resolve_shm, scan=self._scan if self.fast else None)
        self._link_cbuf = ffi.from_buffer(self.reader.buf)
        # what C's fast loop needs to read the link and the channels' sockets by itself
        L = self._fl = self.writer.c
        L.buf = self._link_cbuf
        L.cap = len(self.reader.buf)
        L.nslots = SCAN_SLOTS
        L.slots = self._slots
        L.scan = self._scan_state
        L.recs = self._scan_recs
        L.rcap = SCAN_RECORDS
        self.reader.c_scan = self._scan_state
        if self.fast:
            loop.c_watch(fd, lib.FL_ENT_LINK, L, 0, self._c_event)
        loop.add_pre_poll(self._pre_poll)
        self.pipes = Pipes(loop, self._send_pipe, self.pipe_id_base)
        self.writer.send_urgent(link.hello_frame(window, f"wlproxy {self.side}"))

    # -- input ---------------------------------------------------------------
    def _pre_poll(self) -> None:
        L = self._fl
        L.writer_idle = self.writer.idle_for_c
        L.reader_idle = self.reader.idle_for_c

    def _c_event(self, kind: int, arg: int) -> None:
        """What C's fast loop left to Python on the link fd."""
        if kind == lib.FL_EV_LINK:
            self.reader.c_read(self._fl.nread)
        elif kind == lib.FL_EV_KICK:
            self.writer.kick()

    def _scan(self, n: int, done: bool = False) -> int:
        """Let C take the DATA, CREDIT (and on the host SHM_DATA) frames at the
        start of the reader's ``view[:n]`` (``done``: C's fast loop did); apply
        their results; returns the bytes taken."""
        st = self._scan_state
        if done:
            used = self._fl.scanned
        else:
            used = lib.fp_link_scan(self._slots, SCAN_SLOTS, self._link_cbuf, n, st, self._scan_recs, SCAN_RECORDS)
        if not st.ntouched:
            return used
        view = self.reader.view
        chans = self._slot_ch
        touched = [chans[k] for k in st.touched[0:st.ntouched]]
        try:
            for ch in touched:
                sl = ch.slot
                credit, data = sl.credit, sl.data
                sl.credit = sl.data = sl.touched = 0
                ch.to_credit += data
                if credit and not ch.closed:
                    ch.credit(credit)
            stop = st.stop
            if st.run_n and not chans[st.run_slot].closed:  # a run of plain DATA not (all) sent
                local = chans[st.run_slot].local
                run = b"".join(view[off:off + size]
                               for off, size in zip(st.run_off[0:st.run_n], st.run_len[0:st.run_n]))
                if stop == lib.FP_STOP_SHORT:
                    local.sent_directly(run, st.sent)
                else:
                    # Python goes on with this read: what it adds for the channel leaves with the run
                    self._cork_until_turn_ends(local)
                    local.write(run)
            if stop == lib.FP_STOP_RECORDS and not chans[st.slot].closed:
                ch = chans[st.slot]
                payload = view[st.off:st.off + st.len]
                recs, rec_used = ch.codec.records_from(ch.remote_dir, self._scan_recs_buf, st.nrecs, SCAN_RECORDS,
                                                       st.consumed, payload)
                self._cork_until_turn_ends(ch.local)
                ch.remote_fed(payload, recs, rec_used)
            for ch in touched:
                if not ch.closed:
                    ch._maybe_credit()
                    ch.remote_done()
                ch.sync_fast()
        except link.LinkError as e:
            self.fail(str(e))
            return n
        self.after_input()
        return used

    def _cork_until_turn_ends(self, s) -> None:
        """Hold ``s``'s output until the end of this loop turn (one write for it all)."""
        if not s.corked and not s.closed:
            s.cork()
            if not self._corked:
                self.loop.call_soon(self._uncork_all)
            self._corked.append(s)

    def _uncork_all(self) -> None:
        corked, self._corked = self._corked, []
        for s in corked:
            s.uncork()

    def _others_woken(self, bulk: int) -> bool:
        """Whether a channel other than ``bulk`` delivered to its local socket
        since the last call (its client may be waiting to run)."""
        before, now = self._sends_seen, {}
        woken = False
        for ch in self.channels.values():
            sl = ch.slot
            n = now[ch.ch] = ch.local.sends + (sl.sends if sl is not None else 0)
            woken |= ch.ch != bulk and before.get(ch.ch, n) != n
        self._sends_seen = now
        return woken

    def fast_add(self, ch) -> None:
        """Give ``ch`` a slot in the C link scan (when its slot is free)."""
        k = ch.ch % SCAN_SLOTS
        if self._slot_ch[k] is not None or not self.fast:
            return  # shared with another channel (or no fast paths): this one's input goes through Python
        sl = self._slots[k]
        sl.codec = ch.codec.c_conn
        sl.fd = ch.local.fd
        sl.ch = ch.ch
        sl.dir = ch.remote_dir
        sl.credit = sl.data = sl.touched = sl.sends = 0
        ch.codec.fast_read_into(sl, ch.local, ch.sf)
        sl.peer_window = ch.peer_window
        sl.acct = ch.acct if ch.acct is not None else ffi.NULL
        ch.slot_unacked(sl)
        self._slot_ch[k] = ch
        ch.slot = sl
        ch.sync_fast()
        ch.sync_lfast()
        self.loop.c_watch(ch.local.fd, lib.FL_ENT_LOCAL, self._fl, k, ch.c_event)

    def fast_remove(self, ch) -> None:
        if ch.slot is not None:
            k = ch.ch % SCAN_SLOTS
            sl = self._slots[k]
            ch.slot_unacked(None)
            self.loop.c_unwatch(sl.fd)
            sl.ch = 0
            sl.fast = sl.lfast = 0
            sl.codec = ffi.NULL
            sl.rd = ffi.NULL
            sl.acct = ffi.NULL
            self._slot_ch[k] = None
            ch.slot = None

    def pool_add(self, pool) -> None:
        """Let the C link scan write SHM_DATA for ``pool`` (a ``HostPool``) when it has room."""
        if len(self._pools) < SCAN_POOLS and self.fast:
            self._pools_c[len(self._pools)] = pool.c
            self._pools.append(pool)
            self._scan_state.npools = len(self._pools)

    def pool_remove(self, pool) -> None:
        st = self._scan_state
        if st.shm_pool == pool.c:  # C's fast loop is streaming into it: it drops the rest instead
            st.shm_pool = ffi.NULL
        if pool in self._pools:
            i = self._pools.index(pool)
            last = self._pools.pop()
            if last is not pool:
                self._pools[i] = last
                self._pools_c[i] = last.c
            self._pools_c[len(self._pools)] = ffi.NULL
            self._scan_state.npools = len(self._pools)

    def after_input(self) -> None:
        """After each batch of link input (the host checks its backlog)."""

    def _events(self, events: list) -> None:
        batch = len(events) > 1
        for ev in events:
            if self.closed:
                return
            try:
                if type(ev) is link.ShmChunk:
                    self.shm_chunk(ev)
                elif ev.type == link.DATA:  # the common case first
                    ch = self.channel_for(ev)
                    if ch is not None:
                        if batch:  # what this batch brings the client leaves in one write
                            self._cork_until_turn_ends(ch.local)
                        ch.remote_data(ev.payload)
                else:
                    self._frame(ev)
            except link.LinkError as e:
                self.fail(str(e))
                return
        self.after_input()

    def _frame(self, f: link.Frame) -> None:
        t = f.type
        if t == link.HELLO:
            if self.peer_window:
                raise link.LinkError("second HELLO")
            version, window, peer = link.parse_hello(f.payload)
            if version != link.VERSION:
                raise link.LinkError(f"peer speaks link version {version}, we speak {link.VERSION}")
            if not 4096 <= window <= 1 << 26:
                raise link.LinkError(f"peer's window of {window} bytes is out of range")
            self.peer_window = window
            log.info("%s: link up with %s", self.name, peer)
            self.on_hello()
            return
        if t == link.ERROR:
            raise link.LinkError("peer reported: " + f.payload.decode("utf-8", "replace"))
        if t in (link.PIPE_DATA, link.PIPE_CLOSE, link.PIPE_CREDIT, link.FD_PIPE):
            self._pipe_frame(f)
            return
        ch = self.channel_for(f)
        if ch is None:
            return  # a frame for a channel closed on our side meanwhile
        if t == link.DATA:
            ch.remote_data(f.payload)
        elif t == link.CREDIT:
            ch.credit(link.u32(f.payload, "CREDIT"))
        elif t == link.CLOSE:
            code, reason = link.parse_close(f.payload)
            ch.close(f"closed by peer: {reason}", notify=False, flush_local=True)
        else:
            self.handle_frame(ch, f)

    def _pipe_frame(self, f: link.Frame) -> None:
        t = f.type
        if t == link.FD_PIPE:
            pid = link.u32(f.payload, "FD_PIPE")
            ch = self.channel_for(f)
            if not self.peer_pipe_id_ok(pid):
                raise link.LinkError(f"pipe id {pid:#x} is outside the peer's range")
            if ch is None:
                return
            if len(self.pipes) >= 256:
                raise link.LinkError("too many open pipes")
            ch.remote_fd(self.pipes.import_source(ch.ch, pid), ("pipe", pid))
        elif t == link.PIPE_DATA:
            if len(f.payload) < 4:
                raise link.LinkError("short PIPE_DATA")
            pid = int.from_bytes(f.payload[:4], "little")
            self.pipes.data(pid, memoryview(f.payload)[4:])
        elif t == link.PIPE_CLOSE:
            self.pipes.peer_closed(link.u32(f.payload, "PIPE_CLOSE"))
        else:
            pid, n = link.parse_pipe_credit(f.payload)
            self.pipes.credit(pid, n)

    def peer_pipe_id_ok(self, pid: int) -> bool:
        return True

    def _send_pipe(self, channel: int, frame: bytes) -> None:
        ch = self.channels.get(channel)
        if ch is not None and not ch.closed:
            ch.queue_frame(frame)
            ch.flush()
        elif not self.closed:
            self.writer.send_urgent(frame)

    def channel_for(self, f: link.Frame):
        """The open channel a frame is for; None for one closed meanwhile;
        LinkError for one that never existed."""
        raise NotImplementedError

    # -- hooks ---------------------------------------------------------------
    def on_hello(self) -> None:
        pass

    def handle_frame(self, ch, f: link.Frame) -> None:
        raise link.LinkError(f"unexpected {link.NAMES.get(f.type, f.type)} frame")

    def shm_chunk(self, c: link.ShmChunk) -> None:
        raise link.LinkError("unexpected SHM_DATA")

    def resolve_shm(self, channel: int, key: int, offset: int, length: int) -> memoryview | None:
        return None

    def channel_closed(self, ch, reason: str) -> None:
        self.fast_remove(ch)
        self.channels.pop(ch.ch, None)
        self.pipes.close_channel(ch.ch)

    # -- teardown ------------------------------------------------------------
    def _io_error(self, reason: str) -> None:
        self.shutdown(reason, violation=False)

    def fail(self, reason: str) -> None:
        """The peer broke the protocol: drop the link."""
        log.warning("%s: dropping link: %s", self.name, reason)
        audit("link_dropped", vm=self.vm, link=self.name, reason=reason)
        if not self.writer.closed:
            self.writer.send_urgent(link.frame(link.ERROR, 0, reason.encode()[:1000]))
        self.shutdown(reason, violation=True)

    def shutdown(self, reason: str, *, violation: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if not violation:
            log.info("%s: link closed: %s", self.name, reason)
        for ch in list(self.channels.values()):
            self.link_lost(ch, reason)
        self.channels.clear()
        self.pipes.close_all()
        self.reader.closed = True
        self.writer.closed = True
        self.loop.remove_pre_poll(self._pre_poll)
        self._fl.writer_idle = self._fl.reader_idle = 0
        self.loop.forget(self.fd)
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.on_shutdown(reason)

    def link_lost(self, ch, reason: str) -> None:
        ch.close(f"link lost: {reason}", notify=False)

    def on_shutdown(self, reason: str) -> None:
        pass
