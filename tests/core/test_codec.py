"""Unit tests of the sans-IO C codec (``wlproxy.core.codec.Codec``) and the wire helpers.

The codec is fed bytes exactly as a proxy receives them: a buffer that the
caller keeps (``feed`` returns how much it consumed), plus a count of fds
that arrived with the bytes.
"""

from __future__ import annotations

import pytest

from helpers_wire import encode, header, raw, split, string, u32
from wlproxy.core import wire
from wlproxy.core.codec import (DEFAULT_MAX_MESSAGE, ERROR, INVALID_METHOD, INVALID_OBJECT, MSG, NO_MEMORY, PASS,
                           SERVER_ID_START, Codec, default_tables)
from wlproxy.core.protocol import EVENT, REQUEST, load

P = load()


def req(obj, iface, name, *args):
    return encode(obj, iface, name, *args)


def ev(obj, iface, name, *args):
    return encode(obj, iface, name, *args, direction=EVENT)


def bind(name, iface, version, new_id, registry=2):
    return req(registry, "wl_registry", "bind", name, wire.Untyped((iface, version, new_id)))


class Peer:
    """Drives one codec the way a proxy does: it keeps the unconsumed tail per direction."""

    def __init__(self, codec: Codec | None = None):
        self.codec = codec or Codec()
        self.buf = [bytearray(), bytearray()]
        self.base = [0, 0]  # stream offset of buf[d][0]

    def feed(self, d: int, data: bytes, fds: int = 0) -> list[tuple]:
        """Records as (kind, absolute start, length, obj, opcode, nfds, code)."""
        b = self.buf[d]
        b += data
        recs, used = self.codec.feed(d, b, len(b), fds)
        out = [(r.kind, self.base[d] + r.start, r.length, r.obj, r.opcode, r.nfds, r.code) for r in recs]
        if recs and recs[-1].kind == ERROR:
            assert recs[-1].start == used  # everything before the bad message was handled
        del b[:used]
        self.base[d] += used
        return out

    def ok(self, d: int, data: bytes, fds: int = 0) -> list[tuple]:
        out = self.feed(d, data, fds)
        assert all(r[0] != ERROR for r in out), self.codec.error_text()
        return out

    def error(self, d: int, data: bytes, fds: int = 0) -> tuple[tuple, str]:
        out = self.feed(d, data, fds)
        assert out and out[-1][0] == ERROR, f"accepted: {out}"
        return out[-1], self.codec.error_text()


def started(versions: dict[str, int] | None = None) -> Peer:
    """A connection with a registry (2) and wl_compositor (3), wl_shm (4), wl_seat (5),
    wl_data_device_manager (6), wl_output (7) bound."""
    v = {"wl_compositor": 4, "wl_shm": 1, "wl_seat": 7, "wl_data_device_manager": 3, "wl_output": 3}
    v.update(versions or {})
    p = Peer()
    p.ok(REQUEST, req(1, "wl_display", "get_registry", 2))
    p.ok(REQUEST, b"".join(bind(n + 1, iface, v[iface], n + 3) for n, iface in enumerate(v)))
    return p


# -- splitting and partial messages ------------------------------------------------

def sample_requests() -> bytes:
    return b"".join([
        req(1, "wl_display", "get_registry", 2),
        bind(1, "wl_compositor", 4, 3),
        bind(2, "xdg_wm_base", 2, 4),
        req(3, "wl_compositor", "create_surface", 5),
        req(4, "xdg_wm_base", "get_xdg_surface", 6, 5),
        req(6, "xdg_surface", "get_toplevel", 7),
        req(7, "xdg_toplevel", "set_title", "a title of some length ✓"),
        req(7, "xdg_toplevel", "set_app_id", "x"),
        req(5, "wl_surface", "damage", -1, 2, 300, 400),
        req(5, "wl_surface", "commit"),
        req(1, "wl_display", "sync", 8),
    ])


def test_split_one_shot_and_byte_by_byte_agree():
    stream = sample_requests()
    msgs = split(stream)
    bounds = []
    pos = 0
    for m in msgs:
        bounds.append((pos, len(m)))
        pos += len(m)
    assert pos == len(stream)

    whole = Peer()
    whole.codec.intercept_all()
    recs = whole.ok(REQUEST, stream)
    assert [(r[0], r[1], r[2]) for r in recs] == [(MSG, s, n) for s, n in bounds]

    bytewise = Peer()
    bytewise.codec.intercept_all()
    got = []
    for i in range(len(stream)):
        out = bytewise.ok(REQUEST, stream[i:i + 1])
        # a record appears exactly when the last byte of its message arrives
        ends = [s + n for s, n in bounds]
        if i + 1 in ends:
            assert len(out) == 1 and out[0][1] + out[0][2] == i + 1
        else:
            assert out == []
        got += out
    assert got == recs
    assert bytewise.buf[REQUEST] == b""
    assert whole.codec.object_count == bytewise.codec.object_count == 8  # display + 7 created


def test_partial_header_and_body_wait_for_more():
    c = Codec()
    msg = req(1, "wl_display", "sync", 2)
    for n in range(len(msg)):
        recs, used = c.feed(REQUEST, msg[:n], n)
        assert (recs, used) == ([], 0)
    recs, used = c.feed(REQUEST, msg, len(msg))
    assert used == len(msg) and [r.kind for r in recs] == [PASS]
    assert c.lookup(2).iface.name == "wl_callback"


def test_split_across_calls_carries_partial_message():
    p = Peer()
    p.codec.intercept_all()
    a = req(1, "wl_display", "get_registry", 2)
    b = req(1, "wl_display", "sync", 3)
    out1 = p.ok(REQUEST, a + b[:5])
    assert [(r[1], r[2]) for r in out1] == [(0, len(a))]
    assert bytes(p.buf[REQUEST]) == b[:5]
    out2 = p.ok(REQUEST, b[5:])
    assert [(r[1], r[2], r[3]) for r in out2] == [(len(a), len(b), 1)]


def test_many_records_exceed_record_capacity():
    c = Codec(record_capacity=4)
    c.intercept_all()
    stream = req(1, "wl_display", "get_registry", 2) + b"".join(
        req(1, "wl_display", "sync", n) for n in range(3, 60))
    recs, used = c.feed(REQUEST, stream, len(stream))
    assert used == len(stream)
    assert [r.kind for r in recs] == [MSG] * 58
    starts = [r.start for r in recs]
    assert starts == [0] + [12 + 12 * k for k in range(57)]
    assert [r.obj for r in recs] == [1] * 58


# -- fds -------------------------------------------------------------------------------

def test_fd_arriving_before_its_message_bytes():
    p = started()
    create = req(4, "wl_shm", "create_pool", 9, -1, 4096)
    p.codec.intercept_all()
    # the fd comes with an unrelated message; create_pool's bytes follow in two reads
    out = p.ok(REQUEST, req(1, "wl_display", "sync", 8), fds=1)
    assert [r[5] for r in out] == [0]
    assert p.codec.pending_fds(REQUEST) == 1
    assert p.ok(REQUEST, create[:10]) == []
    out = p.ok(REQUEST, create[10:])
    assert [(r[0], r[3], r[4], r[5]) for r in out] == [(MSG, 4, 0, 1)]
    assert p.codec.pending_fds(REQUEST) == 0
    assert p.codec.lookup(9).iface.name == "wl_shm_pool"


def test_fds_matched_to_messages_in_order():
    stream = b"".join([
        req(4, "wl_shm", "create_pool", 8, -1, 100),
        req(1, "wl_display", "sync", 9),
        req(4, "wl_shm", "create_pool", 10, -1, 200),
        req(8, "wl_shm_pool", "resize", 300),
    ])
    p = started()
    p.codec.intercept_all()
    out = p.ok(REQUEST, stream, fds=2)
    assert [(r[3], r[4], r[5]) for r in out] == [(4, 0, 1), (1, 0, 0), (4, 0, 1), (8, 2, 0)]
    # not intercepted: one contiguous range carrying both fds
    q = started()
    base = q.base[REQUEST]
    out = q.ok(REQUEST, stream, fds=2)
    assert [(r[0], r[1], r[2], r[5]) for r in out] == [(PASS, base, len(stream), 2)]


def test_more_fds_than_messages_stay_queued():
    p = started()
    p.ok(REQUEST, req(4, "wl_shm", "create_pool", 8, -1, 100), fds=3)
    assert p.codec.pending_fds(REQUEST) == 2
    p.ok(REQUEST, req(4, "wl_shm", "create_pool", 9, -1, 100))
    assert p.codec.pending_fds(REQUEST) == 1


def test_missing_fd_is_an_error():
    p = started()
    good = req(1, "wl_display", "sync", 8)
    rec, text = p.error(REQUEST, good + req(4, "wl_shm", "create_pool", 9, -1, 4096))
    assert rec[1] == p.base[REQUEST] and rec[6] == INVALID_METHOD and rec[3] == 1
    assert "wl_shm@4" in text and "missing fd" in text
    assert p.codec.lookup(9) is None


def test_fds_are_counted_per_direction():
    p = started()
    p.ok(REQUEST, req(5, "wl_seat", "get_keyboard", 8))
    keymap = ev(8, "wl_keyboard", "keymap", 1, -1, 4096)
    # an fd queued on the request side does not satisfy an event
    p.ok(REQUEST, req(1, "wl_display", "sync", 9), fds=1)
    rec, text = p.error(EVENT, keymap)
    assert "missing fd" in text and "wl_keyboard@8" in text
    q = started()
    q.ok(REQUEST, req(5, "wl_seat", "get_keyboard", 8))
    out = q.ok(EVENT, keymap, fds=1)
    assert out[-1][5] == 1


# -- the object map ---------------------------------------------------------------------

def test_new_id_and_bind_create_objects_with_interface_and_version():
    p = started({"wl_compositor": 4, "wl_output": 2})
    assert p.codec.lookup(1).iface.name == "wl_display"
    info = p.codec.lookup(2)
    assert (info.iface.name, info.version, info.zombie) == ("wl_registry", 1, False)
    info = p.codec.lookup(3)
    assert (info.iface.name, info.version) == ("wl_compositor", 4)
    assert p.codec.lookup(7).version == 2
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8) + req(8, "wl_surface", "frame", 9))
    # created objects inherit the version of the object that created them
    assert (p.codec.lookup(8).iface.name, p.codec.lookup(8).version) == ("wl_surface", 4)
    assert p.codec.lookup(9).iface.name == "wl_callback"
    assert p.codec.lookup(10) is None
    assert p.codec.object_count == 9


def test_bind_rejects_unknown_interface_and_unsupported_version():
    p = started()
    rec, text = p.error(REQUEST, bind(99, "no_such_interface", 1, 8))
    assert rec[6] == INVALID_METHOD and "no_such_interface" in text
    q = started()
    rec, text = q.error(REQUEST, bind(1, "wl_compositor", P["wl_compositor"].version + 1, 8))
    assert "wl_compositor version" in text
    r = started()
    rec, text = r.error(REQUEST, bind(1, "wl_compositor", 0, 8))
    assert "version 0" in text


def test_bind_interface_name_with_embedded_nul_is_unknown():
    # "wl_compositor\0xyz": equal to a known name up to the NUL; it names no interface
    p = started()
    body = u32(1) + string(b"wl_compositor\0xyz") + u32(1, 8)
    rec, text = p.error(REQUEST, raw(2, 0, body))
    assert rec[6] == INVALID_METHOD and "unknown interface 'wl_compositor'" in text
    assert p.codec.lookup(8) is None
    # a prefix of a known name is no match either, nor is a longer name
    for name in (b"wl_composito", b"wl_compositorx", b"wl_", b"zzzz", b"a"):
        q = started()
        rec, text = q.error(REQUEST, raw(2, 0, u32(1) + string(name) + u32(1, 8)))
        assert "unknown interface" in text


def test_bind_finds_every_interface_by_name():
    for iface in P.interfaces:
        p = Peer()
        p.ok(REQUEST, req(1, "wl_display", "get_registry", 2) + bind(1, iface.name, iface.version, 3))
        assert p.codec.lookup(3).iface.name == iface.name


def test_destructor_makes_a_zombie_until_delete_id():
    p = started()
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    p.ok(REQUEST, req(8, "wl_surface", "destroy"))
    info = p.codec.lookup(8)
    assert info.zombie and info.iface.name == "wl_surface"
    count = p.codec.object_count
    # events to a zombie are still validated and passed (the client discards them)
    p.ok(EVENT, ev(8, "wl_surface", "enter", 7))
    p.ok(EVENT, ev(1, "wl_display", "delete_id", 8))
    assert p.codec.lookup(8) is None
    assert p.codec.object_count == count - 1
    # now the id is free again
    p.ok(REQUEST, req(3, "wl_compositor", "create_region", 8))
    assert p.codec.lookup(8).iface.name == "wl_region"


def test_request_on_zombie_is_invalid_object():
    p = started()
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8) + req(8, "wl_surface", "destroy"))
    rec, text = p.error(REQUEST, req(8, "wl_surface", "commit"))
    assert (rec[3], rec[6]) == (1, INVALID_OBJECT)
    assert "8" in text and "destroyed" in text


def test_zombie_id_is_still_in_use():
    p = started()
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8) + req(8, "wl_surface", "destroy"))
    rec, text = p.error(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    assert rec[6] == INVALID_METHOD and "new id 8 is already in use" in text


def test_event_destructor_and_delete_id():
    p = started()
    p.ok(REQUEST, req(1, "wl_display", "sync", 8))
    p.ok(EVENT, ev(8, "wl_callback", "done", 42))
    assert p.codec.lookup(8).zombie
    p.ok(EVENT, ev(1, "wl_display", "delete_id", 8))
    assert p.codec.lookup(8) is None


def test_delete_id_does_not_free_the_display():
    p = started()
    p.ok(EVENT, ev(1, "wl_display", "delete_id", 1))
    assert p.codec.lookup(1).iface.name == "wl_display"


def test_server_ids_from_data_offer_event():
    p = started()
    p.ok(REQUEST, req(6, "wl_data_device_manager", "get_data_device", 8, 5))
    offer = SERVER_ID_START
    p.ok(EVENT, ev(8, "wl_data_device", "data_offer", offer))
    info = p.codec.lookup(offer)
    assert (info.iface.name, info.version) == ("wl_data_offer", 3)
    p.ok(EVENT, ev(offer, "wl_data_offer", "offer", "text/plain"))
    p.ok(EVENT, ev(8, "wl_data_device", "selection", offer))
    p.ok(EVENT, ev(8, "wl_data_device", "data_offer", offer + 1))
    assert p.codec.lookup(offer + 1).iface.name == "wl_data_offer"
    p.ok(REQUEST, req(offer, "wl_data_offer", "receive", "text/plain", -1), fds=1)
    # a server object's destructor frees it at once: there is no delete_id for server ids
    p.ok(REQUEST, req(offer, "wl_data_offer", "destroy"))
    assert p.codec.lookup(offer) is None
    rec, text = p.error(REQUEST, req(offer, "wl_data_offer", "destroy"))
    assert (rec[6], f"invalid object {offer}") == (INVALID_OBJECT, text)


def test_server_new_id_must_be_in_server_range_and_next():
    p = started()
    p.ok(REQUEST, req(6, "wl_data_device_manager", "get_data_device", 8, 5))
    rec, text = p.error(EVENT, ev(8, "wl_data_device", "data_offer", 9))
    assert "outside the server's id range" in text
    q = started()
    q.ok(REQUEST, req(6, "wl_data_device_manager", "get_data_device", 8, 5))
    rec, text = q.error(EVENT, ev(8, "wl_data_device", "data_offer", SERVER_ID_START + 5))
    assert "not the next free id" in text


def test_client_new_id_must_be_in_client_range_and_next():
    p = started()
    rec, text = p.error(REQUEST, req(1, "wl_display", "sync", SERVER_ID_START + 1))
    assert (rec[3], rec[6]) == (1, INVALID_METHOD)
    assert "outside the client's id range" in text
    q = started()
    rec, text = q.error(REQUEST, req(1, "wl_display", "sync", 20))
    assert "new id 20 is not the next free id (8)" in text
    r = started()
    rec, text = r.error(REQUEST, req(1, "wl_display", "sync", 0))
    assert "new id 0" in text


def test_object_argument_type_and_liveness():
    p = started()
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    rec, text = p.error(REQUEST, req(8, "wl_surface", "attach", 3, 0, 0))
    assert rec[6] == INVALID_METHOD and "object 3 is a wl_compositor, expected wl_buffer" in text
    q = started()
    q.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    rec, text = q.error(REQUEST, req(8, "wl_surface", "attach", 77, 0, 0))
    assert rec[6] == INVALID_METHOD and "invalid object 77" in text
    r = started()
    r.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    r.ok(REQUEST, req(8, "wl_surface", "attach", 0, 0, 0))  # nullable
    rec, text = r.error(REQUEST, req(6, "wl_data_device_manager", "get_data_device", 9, 0))
    assert "null object" in text


def test_object_limit():
    c = Codec(max_objects=4)
    p = Peer(c)
    p.ok(REQUEST, req(1, "wl_display", "get_registry", 2) + req(1, "wl_display", "sync", 3)
         + req(1, "wl_display", "sync", 4))
    rec, text = p.error(REQUEST, req(1, "wl_display", "sync", 5))
    assert rec[6] == NO_MEMORY and "limit of 4" in text


# -- intercept mask ------------------------------------------------------------------------

def surface_traffic() -> list[bytes]:
    return [
        req(8, "wl_surface", "attach", 0, 0, 0),
        req(8, "wl_surface", "damage", 0, 0, 10, 10),
        req(8, "wl_surface", "commit"),
        req(8, "wl_surface", "frame", 9),
        req(8, "wl_surface", "damage", 1, 1, 1, 1),
        req(8, "wl_surface", "commit"),
        req(8, "wl_surface", "commit"),
        req(8, "wl_surface", "set_buffer_scale", 1),
    ]


def test_intercept_mask_selects_messages_and_merges_the_rest():
    p = started()
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    p.codec.intercept("wl_surface", REQUEST, "commit")
    msgs = surface_traffic()
    base = p.base[REQUEST]
    out = p.ok(REQUEST, b"".join(msgs))
    off = [base]
    for m in msgs:
        off.append(off[-1] + len(m))
    assert [(r[0], r[1], r[2]) for r in out] == [
        (PASS, off[0], off[2] - off[0]),
        (MSG, off[2], len(msgs[2])),
        (PASS, off[3], off[5] - off[3]),
        (MSG, off[5], len(msgs[5])),
        (MSG, off[6], len(msgs[6])),
        (PASS, off[7], len(msgs[7])),
    ]
    assert all(r[3] == 8 and r[4] == 6 for r in out if r[0] == MSG)


def test_intercept_whole_interface_events_and_switch_off():
    p = started()
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    p.codec.intercept("wl_surface", REQUEST)  # every wl_surface request
    out = p.ok(REQUEST, b"".join(surface_traffic()))
    assert [r[0] for r in out] == [MSG] * 8
    p.codec.intercept("wl_surface", REQUEST, on=False)
    p.codec.intercept("wl_callback", EVENT, "done")
    out = p.ok(REQUEST, req(8, "wl_surface", "commit") + req(8, "wl_surface", "frame", 10))
    assert [r[0] for r in out] == [PASS]
    out = p.ok(EVENT, ev(7, "wl_output", "done") + ev(9, "wl_callback", "done", 5) + ev(7, "wl_output", "scale", 1))
    assert [(r[0], r[3]) for r in out] == [(PASS, 7), (MSG, 9), (PASS, 7)]


def test_events_for_unknown_objects_pass_uninterpreted():
    p = started()
    p.codec.intercept_all()
    out = p.ok(EVENT, ev(1234, "wl_callback", "done", 1))
    assert [r[0] for r in out] == [PASS]


def test_mask_indices_match_the_protocol_model():
    t = default_tables()
    seen = set()
    for iface in P.interfaces:
        for d in (REQUEST, EVENT):
            for m in iface.messages(d):
                i = t.msg_index(iface.name, d, m.name)
                assert t.message(iface.index, d, m.opcode) == (iface, m)
                seen.add(i)
    assert seen == set(range(t.n_msgs))


# -- version checks ---------------------------------------------------------------------------

def test_request_since_version():
    p = started({"wl_compositor": 3})
    p.ok(REQUEST, req(3, "wl_compositor", "create_surface", 8))
    p.ok(REQUEST, req(8, "wl_surface", "set_buffer_scale", 2))  # since 3
    rec, text = p.error(REQUEST, req(8, "wl_surface", "damage_buffer", 0, 0, 1, 1))  # since 4
    assert (rec[3], rec[4], rec[6]) == (1, 9, INVALID_METHOD)
    assert "wl_surface@8" in text and "needs version 4" in text and "has version 3" in text


def test_event_since_version():
    p = started({"wl_output": 1})
    p.ok(EVENT, ev(7, "wl_output", "mode", 3, 640, 480, 60000))
    rec, text = p.error(EVENT, ev(7, "wl_output", "done"))  # since 2
    assert "needs version 2" in text


# -- message-level errors -------------------------------------------------------------------------

@pytest.mark.parametrize("data, code, words", [
    (raw(1, 0, size=4), INVALID_METHOD, "below the 8-byte header"),
    (raw(1, 0, u32(2), size=10) + b"\0\0", INVALID_METHOD, "not a multiple of 4"),
    (header(1, 0, DEFAULT_MAX_MESSAGE + 4), INVALID_METHOD, "exceeds the limit of 4096"),
    (raw(1, 9, u32(2)), INVALID_METHOD, "invalid request opcode 9 for wl_display@1"),
    (raw(77, 0), INVALID_OBJECT, "invalid object 77"),
    (raw(1, 0, u32(3, 3)), INVALID_METHOD, "4 bytes of arguments, but the message carries 8"),
    (raw(1, 0), INVALID_METHOD, "message too short"),
])
def test_header_and_framing_errors(data, code, words):
    p = Peer()
    p.ok(REQUEST, req(1, "wl_display", "get_registry", 2))
    rec, text = p.error(REQUEST, data)
    assert rec[6] == code and rec[3] == 1
    assert words in text


def test_string_checks():
    def run(body):
        p = started()
        p.ok(REQUEST, req(6, "wl_data_device_manager", "create_data_source", 8))
        return p.error(REQUEST, raw(8, 0, body))

    rec, text = run(u32(4) + b"abcd")
    assert "string not NUL-terminated" in text
    rec, text = run(u32(9) + b"abcd")
    assert "string length 9 runs past the message end" in text
    rec, text = run(u32(0))
    assert "null string not allowed" in text
    rec, text = run(u32(0xFFFFFFFF) + b"abc\0")
    assert "runs past the message end" in text
    assert rec[6] == INVALID_METHOD


def test_array_checks():
    p = Peer()
    p.ok(REQUEST, req(1, "wl_display", "get_registry", 2) + bind(1, "wl_seat", 1, 3)
         + req(3, "wl_seat", "get_keyboard", 4))
    good = ev(4, "wl_keyboard", "enter", 1, 0, b"\1\2\3\4\5")
    rec, text = p.error(EVENT, good)  # the surface argument 0 is not nullable
    assert "null object" in text
    q = Peer()
    q.ok(REQUEST, req(1, "wl_display", "get_registry", 2) + bind(1, "wl_seat", 1, 3)
         + req(3, "wl_seat", "get_keyboard", 4) + bind(2, "wl_compositor", 1, 5)
         + req(5, "wl_compositor", "create_surface", 6))
    q.ok(EVENT, ev(4, "wl_keyboard", "enter", 1, 6, b"\1\2\3\4\5"))
    rec, text = q.error(EVENT, raw(4, 1, u32(1, 6, 40) + b"\0" * 8))
    assert "array length 40 runs past the message end" in text


# -- encoder round trip --------------------------------------------------------------------------------

ROUND_TRIP = [
    (REQUEST, 1, "wl_display", "get_registry", [2]),
    (REQUEST, 2, "wl_registry", "bind", [1, wire.Untyped(("wl_compositor", 4, 3))]),
    (REQUEST, 2, "wl_registry", "bind", [2, wire.Untyped(("wl_seat", 7, 4))]),
    (REQUEST, 2, "wl_registry", "bind", [3, wire.Untyped(("xdg_wm_base", 2, 5))]),
    (REQUEST, 3, "wl_compositor", "create_surface", [6]),
    (REQUEST, 5, "xdg_wm_base", "get_xdg_surface", [7, 6]),
    (REQUEST, 7, "xdg_surface", "get_toplevel", [8]),
    (REQUEST, 8, "xdg_toplevel", "set_title", ["héllo wörld"]),
    (REQUEST, 8, "xdg_toplevel", "set_app_id", ["abc"]),  # length 4 with NUL: no padding
    (REQUEST, 8, "xdg_toplevel", "set_app_id", [""]),
    (REQUEST, 8, "xdg_toplevel", "set_fullscreen", [0]),  # a null object decodes as 0
    (REQUEST, 6, "wl_surface", "attach", [0, -5, 7]),
    (REQUEST, 6, "wl_surface", "damage", [-2147483648, 2147483647, 0, 1]),
    (REQUEST, 4, "wl_seat", "get_pointer", [9]),
    (REQUEST, 4, "wl_seat", "get_keyboard", [10]),
    (EVENT, 8, "xdg_toplevel", "configure", [640, 480, b"\1\0\0\0\4\0\0\0"]),
    (EVENT, 8, "xdg_toplevel", "configure", [0, 0, b""]),
    (EVENT, 9, "wl_pointer", "enter", [11, 6, 10.5, -3.25]),
    (EVENT, 9, "wl_pointer", "motion", [1234, 0.00390625, 1023.99609375]),
    (EVENT, 10, "wl_keyboard", "keymap", [1, -1, 48000]),
    (EVENT, 10, "wl_keyboard", "enter", [12, 6, b"\x1e\0\0\0"]),
    (EVENT, 4, "wl_seat", "name", ["seat0"]),
    (EVENT, 1, "wl_display", "error", [6, 3, "something bad"]),
]


def test_encode_feed_decode_round_trip():
    p = Peer()
    p.codec.intercept_all()
    for d, obj, iface, name, args in ROUND_TRIP:
        msg = P[iface].message(d, name)
        data, fds = wire.encode(obj, msg, args)
        assert len(data) % 4 == 0 and wire.header(data) == (obj, msg.opcode, len(data))
        out = p.ok(d, data, fds=len(fds))
        assert len(out) == 1 and out[0][0] == MSG and out[0][2] == len(data) and out[0][5] == len(fds)
        assert wire.decode(msg, data, fds) == args
        assert wire.encode(obj, msg, wire.decode(msg, data, fds))[0] == data


def test_string_encoding_matches_libwayland_layout():
    assert encode(8, "xdg_toplevel", "set_fullscreen", None) == encode(8, "xdg_toplevel", "set_fullscreen", 0)
    data = encode(8, "xdg_toplevel", "set_title", "abc")
    assert data == header(8, 2, 16) + u32(4) + b"abc\0"
    data = encode(8, "xdg_toplevel", "set_title", "abcd")
    assert data == header(8, 2, 20) + u32(5) + b"abcd\0\0\0\0"
    assert string(None) == u32(0)


def test_debug_line_format():
    msg = P["wl_registry"].message(REQUEST, "bind")
    line = wire.debug_line("wl_registry", 2, msg, [1, wire.Untyped(("wl_compositor", 4, 3))],
                           lambda o: None, sent=True, now=1234.5678)
    assert line == '[1234567.800]  -> wl_registry@2.bind(1, "wl_compositor", 4, new id [unknown]@3)'
    msg = P["wl_pointer"].message(EVENT, "enter")
    line = wire.debug_line("wl_pointer", 9, msg, [11, 6, 10.5, -3.25], {6: "wl_surface"}.get, sent=False, now=0.001)
    assert line == "[      1.000] wl_pointer@9.enter(11, wl_surface@6, 10.500000, -3.250000)"
    msg = P["xdg_toplevel"].message(REQUEST, "set_fullscreen")
    assert wire.format_args(msg, [None], lambda o: None) == "nil"
    msg = P["wl_keyboard"].message(EVENT, "keymap")
    assert wire.format_args(msg, [1, 17, 4], lambda o: None) == "1, fd 17, 4"
    msg = P["xdg_toplevel"].message(EVENT, "configure")
    assert wire.format_args(msg, [1, 2, b"\0" * 8], lambda o: None) == "1, 2, array[8]"
    msg = P["wl_display"].message(EVENT, "error")
    assert wire.format_args(msg, [5, 1, None], lambda o: None) == "[unknown]@5, 1, nil"


# -- read, validate and forward in one call (the fast path for local input) -------

def test_read_forward_reads_validates_and_writes_the_link_frame():
    import array
    import os
    import socket

    from wlproxy.core import link
    from wlproxy.io.fdsock import StreamIn
    p = started()
    client, local = socket.socketpair()
    link_w, link_r = socket.socketpair()
    link_r.settimeout(2)
    src = StreamIn(4096)
    data = req(1, "wl_display", "sync", 8) + req(1, "wl_display", "sync", 9)
    client.sendall(data)
    r = p.codec.read_forward(REQUEST, local.fileno(), src, link_w.fileno(), 7, 4096, b"PREFIX")
    assert (r.nread, r.forwarded, r.written) == (len(data), len(data), 6 + 12 + len(data))
    assert link_r.recv(4096) == b"PREFIX" + link.header(link.DATA, 7, len(data)) + data
    assert p.codec.lookup(9) is not None
    src.consume(r.forwarded)
    # more than the room: validated, left to the caller
    client.sendall(req(1, "wl_display", "sync", 10))
    r = p.codec.read_forward(REQUEST, local.fileno(), src, link_w.fileno(), 7, 11, b"")
    assert r.forwarded == 0 and r.nread == 12
    recs, used = p.codec.records_after_read(REQUEST, src)
    assert [(x.kind, x.start, x.length) for x in recs] == [(PASS, 0, 12)] and used == 12
    src.consume(used)
    # a message Python must see: the records are feed's, nothing is written to the link
    twin = started()
    twin.ok(REQUEST, data + req(1, "wl_display", "sync", 10))
    traffic = req(3, "wl_compositor", "create_surface", 11) + req(11, "wl_surface", "damage", 0, 0, 4, 4) \
        + req(11, "wl_surface", "commit")
    for c in (p.codec, twin.codec):
        c.intercept("wl_surface", REQUEST, "commit")
    client.sendall(traffic)
    r = p.codec.read_forward(REQUEST, local.fileno(), src, link_w.fileno(), 7, 4096, b"")
    assert r.forwarded == 0
    recs, used = p.codec.records_after_read(REQUEST, src)
    assert (recs, used) == twin.codec.feed(REQUEST, traffic, len(traffic))
    assert [x.kind for x in recs] == [PASS, MSG]
    link_r.setblocking(False)
    with pytest.raises(BlockingIOError):
        link_r.recv(4096)
    link_r.setblocking(True)
    src.consume(used)
    # an fd: never forwarded here; it is queued with the bytes
    rfd, wfd = os.pipe()
    client.sendmsg([req(1, "wl_display", "sync", 12)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [wfd]))])
    os.close(wfd)
    r = p.codec.read_forward(REQUEST, local.fileno(), src, link_w.fileno(), 7, 4096, b"")
    assert r.forwarded == 0 and r.nfds == 1 and len(src.fds) == 1
    os.close(src.fds.pop())
    os.close(rfd)
    # end of stream, and nothing to read
    link_r.setblocking(False)
    client.close()
    src.consume(src.filled)
    r = p.codec.read_forward(REQUEST, local.fileno(), src)
    assert r.nread == 0 and r.nfds == 0
