"""Sans-IO wrapper around the C wire codec.

``Tables`` compiles the protocol model into the flat arrays the C code walks;
``Codec`` is one connection's state: its object map, its intercept mask and
the count of fds received but not yet matched to messages.  ``feed`` takes
one received buffer and returns records: byte ranges to forward untouched,
messages Python asked to see, or an error that ends the connection.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import NamedTuple

from wlproxy._codec import ffi, lib
from wlproxy.core.protocol import ARG_TYPES, EVENT, REQUEST, Interface, Message, Protocol, load

PASS, MSG, ERROR = lib.WLC_REC_PASS, lib.WLC_REC_MSG, lib.WLC_REC_ERROR
FDS_PER_READ = lib.FL_FDS_PER_READ  # what one recvmsg may carry (SCM_MAX_FD)
SERVER_ID_START = 0xFF000000
DEFAULT_MAX_MESSAGE = 4096
DEFAULT_MAX_OBJECTS = 1 << 20

# wl_display error codes, from the XML; the C codec's own numbers must be the same
DISPLAY_ERROR: dict[str, int] = load()["wl_display"].enums["error"]
INVALID_OBJECT, INVALID_METHOD, NO_MEMORY, IMPLEMENTATION = (
    DISPLAY_ERROR[n] for n in ("invalid_object", "invalid_method", "no_memory", "implementation"))
assert (lib.WLC_ERR_INVALID_OBJECT, lib.WLC_ERR_INVALID_METHOD, lib.WLC_ERR_NO_MEMORY,
        lib.WLC_ERR_IMPLEMENTATION) == (INVALID_OBJECT, INVALID_METHOD, NO_MEMORY, IMPLEMENTATION)


REC_STRUCT = struct.Struct("=IIIIHHHH")  # struct wlc_rec
assert REC_STRUCT.size == ffi.sizeof("struct wlc_rec")


class Record(NamedTuple):
    kind: int
    start: int
    length: int
    obj: int
    iface: int
    opcode: int
    nfds: int
    code: int


class Tables:
    """The protocol model as C tables (kept alive as long as this object)."""

    def __init__(self, proto: Protocol):
        self.proto = proto
        ifaces = proto.interfaces
        msgs: list[tuple[Interface, int, Message]] = []
        args = []
        self._names = [ffi.new("char[]", i.name.encode()) for i in ifaces]
        c_ifaces = ffi.new("struct wlc_iface[]", len(ifaces))
        for idx, iface in enumerate(ifaces):
            ci = c_ifaces[idx]
            ci.name = self._names[idx]
            ci.version = iface.version
            for d in (REQUEST, EVENT):
                ci.first_msg[d] = len(msgs)
                ci.nmsgs[d] = len(iface.messages(d))
                for m in iface.messages(d):
                    msgs.append((iface, d, m))
        c_msgs = ffi.new("struct wlc_msg[]", max(1, len(msgs)))
        for n, (_, _, m) in enumerate(msgs):
            cm = c_msgs[n]
            cm.first_arg = len(args)
            cm.nargs = len(m.args)
            cm.since = m.since
            cm.flags = lib.WLC_MSG_DESTRUCTOR if m.destructor else 0
            cm.nfds = m.nfds
            args.extend(m.args)
        c_args = ffi.new("struct wlc_arg[]", max(1, len(args)))
        for n, a in enumerate(args):
            c_args[n].type = ARG_TYPES[a.type]
            c_args[n].flags = lib.WLC_ARG_NULLABLE if a.allow_null else 0
            c_args[n].iface = proto[a.interface].index if a.interface else lib.WLC_NO_IFACE
        order = sorted(range(len(ifaces)), key=lambda i: ifaces[i].name.encode())
        c_by_name = ffi.new("uint16_t[]", order)
        t = ffi.new("struct wlc_tables *")
        t.n_ifaces = len(ifaces)
        t.ifaces = c_ifaces
        t.msgs = c_msgs
        t.args = c_args
        t.by_name = c_by_name
        t.n_msgs = len(msgs)
        t.display_iface = proto["wl_display"].index
        self._keep = (c_ifaces, c_msgs, c_args, c_by_name)
        self.c = t
        self.msgs = msgs
        self.n_msgs = len(msgs)

    def msg_index(self, iface: str, direction: int, name: str) -> int:
        i = self.proto[iface]
        return int(self.c.ifaces[i.index].first_msg[direction]) + i.message(direction, name).opcode

    def message(self, iface_index: int, direction: int, opcode: int) -> tuple[Interface, Message]:
        iface = self.proto.interfaces[iface_index]
        return iface, iface.messages(direction)[opcode]


@functools.cache
def default_tables() -> Tables:
    return Tables(load())


@dataclass
class ObjectInfo:
    iface: Interface
    version: int
    zombie: bool


class Codec:
    """One Wayland connection as seen by a proxy: both directions, one object map."""

    def __init__(self, tables: Tables | None = None, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_objects: int = DEFAULT_MAX_OBJECTS, record_capacity: int = 256):
        self.tables = tables or default_tables()
        conn = lib.wlc_new(self.tables.c, max_message, max_objects)
        if conn == ffi.NULL:
            raise MemoryError("wlc_new failed")
        self._conn = ffi.gc(conn, lib.wlc_free)
        self.c_conn = self._conn  # for C tables that point at this connection (keep the Codec alive)
        self._mask = ffi.buffer(lib.wlc_mask(conn), self.tables.n_msgs)
        self._recs = ffi.new("struct wlc_rec[]", record_capacity)
        self._recs_buf = memoryview(ffi.buffer(self._recs))
        self._cap = record_capacity
        self._consumed = ffi.new("uint32_t *")
        self._read = ffi.new("struct fp_read *")
        self._filled = ffi.new("uint32_t *")
        self._fds = ffi.new("int32_t[]", FDS_PER_READ)

    # -- configuration -----------------------------------------------------
    def intercept(self, iface: str, direction: int, *names: str, on: bool = True) -> None:
        """Ask to see these messages (all of the interface's, if no names) as MSG records."""
        i = self.tables.proto[iface]
        for m in i.messages(direction):
            if not names or m.name in names:
                self._mask[self.tables.msg_index(iface, direction, m.name)] = b"\x01" if on else b"\x00"

    def intercept_all(self) -> None:
        self._mask[:] = b"\x01" * self.tables.n_msgs

    def set_max_objects(self, n: int) -> None:
        lib.wlc_set_max_objects(self._conn, n)

    # -- the hot path ------------------------------------------------------
    def feed(self, direction: int, buf, length: int, new_fds: int = 0, cbuf=None) -> tuple[list[Record], int]:
        """Validate the complete messages in ``buf[:length]``.

        Returns the records and how many bytes they cover; the caller keeps
        the rest (a partial message) for the next call.  An ERROR record, if
        any, is last.  ``cbuf`` is ``ffi.from_buffer(buf)`` if the caller
        keeps one.
        """
        out: list[Record] = []
        if cbuf is None:
            cbuf = ffi.from_buffer(buf)
        pos = 0
        consumed = self._consumed
        recs_buf = self._recs_buf
        while True:
            n = lib.wlc_feed(self._conn, direction, cbuf + pos, length - pos, new_fds, self._recs,
                             self._cap, consumed)
            new_fds = 0
            if n:
                recs = map(Record._make, REC_STRUCT.iter_unpack(recs_buf[:n * REC_STRUCT.size]))
                if pos:
                    out.extend(r._replace(start=r.start + pos) for r in recs)
                else:
                    out.extend(recs)
            pos += consumed[0]
            if n < self._cap - 1 or (out and out[-1].kind == ERROR):
                return out, pos

    def read_forward(self, direction: int, fd: int, src, link_fd: int = -1, channel: int = 0, room: int = 0,
                     prefix: bytes = b"", sf=None):
        """One read from ``fd`` into ``src`` (a ``StreamIn``; fds go to
        ``src.fds``), validated, and forwarded in the same C call when it is
        one run of plain messages, no more than ``room`` bytes, and ``link_fd``
        is given: ``prefix`` + a DATA frame for ``channel`` go to ``link_fd``
        with one writev.  Returns the C ``struct fp_read`` (valid until the
        next call): ``nread``, ``truncated``, ``forwarded`` and ``written``,
        or the records for ``records_after_read``.  With ``sf`` (the guest's
        surface model), a frame's wl_surface requests are applied in C
        (``applied``: the commit starts at ``split``, its pixels are
        ``sf_spans()[:nspans]`` of ``pool``); when they are small they go in
        the same writev, as SHM_DATA frames before the commit."""
        r = self._read
        r.sf = sf if sf else ffi.NULL
        r.link_fd = link_fd
        r.channel = channel
        r.room = room
        keep = ffi.from_buffer(prefix) if prefix else ffi.NULL
        r.prefix = keep
        r.prefix_len = len(prefix)
        filled = self._filled
        filled[0] = src.filled
        lib.fp_read_forward(self._conn, direction, fd, src.cbuf, len(src.rbuf), filled, self._fds, FDS_PER_READ,
                            r, self._recs, self._cap)
        return self.after_read(src)

    def unsent(self, src, r) -> bytearray:
        """After the forwarded read ``r`` came up short: the bytes its writev
        did not take, from C's one description of those frames (``src`` not
        yet consumed)."""
        out = bytearray(r.total - max(r.written, 0))
        lib.fp_unsent(src.cbuf, r, ffi.from_buffer(out))
        return out

    def after_read(self, src):
        """The last ``read_forward`` (made here or by C's fast loop): its bytes
        and fds join ``src``; returns its ``struct fp_read``."""
        r = self._read
        src.filled = self._filled[0]
        if r.nfds:
            src.fds.extend(ffi.unpack(self._fds, r.nfds))
        return r

    def fast_read_into(self, slot, src, sf=None) -> None:
        """Let C's fast loop read ``src``'s socket with this codec's buffers
        (``slot`` is the channel's ``struct fp_chan``)."""
        self._read.sf = sf if sf else ffi.NULL
        slot.rd = self._read
        slot.lbuf = src.cbuf
        slot.lcap = len(src.rbuf)
        slot.lfilled = self._filled
        slot.lfds = self._fds
        slot.lrecs = self._recs
        slot.lrcap = self._cap

    def records_after_read(self, direction: int, src) -> tuple[list[Record], int]:
        """The records of the last ``read_forward`` that did not forward, as ``feed`` gives them."""
        r = self._read
        return self.records_from(direction, self._recs_buf, r.nrecs, self._cap, r.consumed,
                                 memoryview(src.rbuf)[:src.filled])

    def records_from(self, direction: int, recs: memoryview, n: int, cap: int, used: int,
                     data) -> tuple[list[Record], int]:
        """The ``n`` records a C call left in ``recs`` (an array of ``cap``) after
        validating ``data`` with this codec, as ``feed`` gives them: when the
        array filled up, ``feed`` goes on past the ``used`` bytes it covers."""
        out = list(map(Record._make, REC_STRUCT.iter_unpack(recs[:n * REC_STRUCT.size])))
        if n >= cap - 1 and out[-1].kind != ERROR:
            more, more_used = self.feed(direction, data[used:], len(data) - used)
            out.extend(x._replace(start=x.start + used) for x in more)
            used += more_used
        return out, used

    def error_text(self) -> str:
        return ffi.string(lib.wlc_error(self._conn)).decode("utf-8", "replace")

    # -- the object map ----------------------------------------------------
    def lookup(self, obj: int) -> ObjectInfo | None:
        o = ffi.new("struct wlc_obj *")
        if lib.wlc_lookup(self._conn, obj, o) < 0:
            return None
        return ObjectInfo(self.tables.proto.interfaces[o.iface], o.version, o.state == lib.WLC_OBJ_ZOMBIE)

    def insert(self, obj: int, iface: str, version: int) -> None:
        if lib.wlc_insert(self._conn, obj, self.tables.proto[iface].index, version) < 0:
            raise ValueError(f"cannot insert {iface}@{obj}")

    def remove(self, obj: int) -> None:
        lib.wlc_remove(self._conn, obj)

    @property
    def object_count(self) -> int:
        return int(lib.wlc_object_count(self._conn))

    def message_count(self, direction: int) -> int:
        """Messages validated so far in ``direction`` (for rate limits)."""
        return int(lib.wlc_message_count(self._conn, direction))

    def pending_fds(self, direction: int) -> int:
        return int(lib.wlc_pending_fds(self._conn, direction))
