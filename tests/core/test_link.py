"""The link protocol: the sans-IO decoder, and a hostile guest driving a real
host half (no guest half) in front of real weston."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from wlproxy.core import link
from wlproxy.tools.pair import HostHalf
from wlproxy.tools.weston import Weston

from linkpeer import LinkPeer, msg, split


# -- the decoder -----------------------------------------------------------------

def _dec() -> link.LinkDecoder:
    d = link.LinkDecoder()
    d.feed(link.hello_frame(1 << 16, "x"))
    return d


def test_decoder_frames_split_anywhere() -> None:
    stream = link.hello_frame(4096, "peer") + link.frame(link.OPEN, 1, b"c") + link.frame(link.DATA, 1, b"abcd" * 10)
    for cut in range(1, len(stream)):
        d = link.LinkDecoder()
        evs = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert [(e.type, e.channel) for e in evs] == [(link.HELLO, 0), (link.OPEN, 1), (link.DATA, 1)]
        assert evs[2].payload == b"abcd" * 10


def test_decoder_streams_shm_payload_in_pieces() -> None:
    d = _dec()
    payload = bytes(range(256)) * 64
    stream = link.shm_data_header(3, 7, 1000, len(payload)) + payload
    chunks = [d.feed(stream[i:i + 1000]) for i in range(0, len(stream), 1000)]
    got = [c for evs in chunks for c in evs]
    assert all(isinstance(c, link.ShmChunk) and c.key == 7 and c.channel == 3 for c in got)
    assert b"".join(bytes(c.data) for c in got) == payload
    assert [c.offset for c in got][0] == 1000
    assert got[-1].offset + len(got[-1].data) == 1000 + len(payload)


def test_decoder_direct_target_skips_the_buffer() -> None:
    d = _dec()
    d.feed(link.shm_data_header(1, 2, 64, 10000))
    assert d.direct_target() == (1, 2, 64, 10000)
    d.advance_direct(4000)
    assert d.direct_target() == (1, 2, 4064, 6000)
    d.advance_direct(6000)
    assert d.direct_target() is None
    assert [e.type for e in d.feed(link.frame(link.CREDIT, 1, b"\0" * 4))] == [link.CREDIT]


@pytest.mark.parametrize("bad, why", [
    (link.HEADER.pack(0xFFFFFFFF, link.SHM_DATA, 0, 1), "exceeds the limit"),
    (link.HEADER.pack(1 << 20, link.DATA, 0, 1), "exceeds the limit"),
    (link.HEADER.pack(0, 99, 0, 1), "unknown frame type"),
    (link.HEADER.pack(0, link.DATA, 1, 1), "unknown flags"),
    (link.HEADER.pack(0, link.DATA, 0, 0), "on channel 0"),
    (link.HEADER.pack(0, link.HELLO, 0, 5), "on channel 5"),
    (link.HEADER.pack(4, link.SHM_DATA, 0, 1) + b"\0" * 4, "short SHM_DATA"),
])
def test_decoder_rejects(bad: bytes, why: str) -> None:
    with pytest.raises(link.LinkError, match=why):
        _dec().feed(bad)


def test_decoder_needs_hello_first() -> None:
    with pytest.raises(link.LinkError, match="before HELLO"):
        link.LinkDecoder().feed(link.frame(link.OPEN, 1))


def test_decoder_direction_filter() -> None:
    d = link.LinkDecoder(accept=frozenset({link.HELLO, link.DATA}))
    d.feed(link.hello_frame(4096, "x"))
    with pytest.raises(link.LinkError, match="not allowed"):
        d.feed(link.frame(link.FD_KEYMAP, 1, b"k"))


# -- a hostile guest against the real host half ---------------------------------

@pytest.fixture
def host(weston: Weston, tmp_path: Path):
    h = HostHalf(weston.env(), tmp_path / "run" / "vm" / "hostile", "hostile").start()
    yield h
    h.stop()


def _working_client(host: HostHalf) -> LinkPeer:
    p = LinkPeer(host.link_path)
    p.open_client(1)
    events = p.roundtrip(1, cb_id=3, registry_id=2)
    assert any(obj == 2 for obj, _, _ in split(b"".join(events))), "no registry globals"
    return p


BAD_FRAMES = {
    "malformed (unknown type)": link.HEADER.pack(0, 77, 0, 1),
    "unknown channel": link.frame(link.DATA, 9, msg(1, "wl_display", "sync", 2)),
    "oversized record (4 GiB)": link.HEADER.pack(0xFFFFFFFF, link.DATA, 0, 1),
    "oversized keymap record": link.HEADER.pack(64 << 20, link.FD_SHM, 0, 1),
    "truncated frame then EOF": link.HEADER.pack(100, link.DATA, 0, 1) + b"abc",
    "OPEN reusing a channel id": link.frame(link.OPEN, 1, b"again"),
    "second HELLO": link.hello_frame(4096, "again"),
    "shm data outside its pool": link.fd_shm_frame(1, 5, 4096) + link.shm_data_header(1, 5, 4000, 200) + b"x" * 200,
    "shm data for an unknown pool": link.shm_data_header(1, 6, 0, 16) + b"x" * 16,
    "pipe id in the host's range": link.u32_frame(link.FD_PIPE, 1, 0x80000001),
    "frame type the guest may not send": link.frame(link.FD_KEYMAP, 1, b"keymap"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_link_input_drops_only_that_link(host: HostHalf, case: str) -> None:
    other = _working_client(host)          # a link already open
    bad = LinkPeer(host.link_path)
    bad.open_client(1)
    bad.send(BAD_FRAMES[case])
    if case.startswith("truncated"):
        bad.sock.shutdown(2)
    else:
        assert bad.closed_by_peer(), f"{case}: the host half kept the link"
    bad.close()
    # the other link still works, and a new link is accepted
    other.roundtrip(1, cb_id=3)
    _working_client(host).close()
    other.close()
    log = host.log_text()
    assert host.proc.poll() is None
    if not case.startswith("truncated"):
        assert "dropping link" in log and "link_dropped" in log


def test_guest_client_protocol_error_keeps_other_clients(host: HostHalf) -> None:
    p = LinkPeer(host.link_path)
    p.open_client(1)
    p.open_client(2)
    p.roundtrip(1, cb_id=3, registry_id=2)
    p.roundtrip(2, cb_id=3, registry_id=2)
    p.data(1, msg(77, "wl_surface", "commit"))  # object 77 does not exist
    while True:
        f = p.next_frame()
        if f.type == link.DATA and f.channel == 1:
            err = split(f.payload)[-1]
            obj, op, data = err
            assert (obj, op) == (1, 0)  # wl_display.error
            code = struct.unpack_from("=I", data, 12)[0]
            assert code == 0 and b"invalid object 77" in data
        if f.type == link.CLOSE and f.channel == 1:
            break
    p.roundtrip(2, cb_id=3)  # the VM's other client is unaffected
    p.close()


def test_c_builds_the_same_frame_header_as_link_py() -> None:
    """The header layout has one definition (link.HEADER); C's builder must agree."""
    from wlproxy._codec import ffi, lib
    h = ffi.new("uint8_t[]", link.HEADER_SIZE)
    for length, ftype, ch in [(0, link.DATA, 1), (65536, link.SHM_DATA, 0xFFFFFFFF), (12, link.CREDIT, 7)]:
        lib.fp_frame_header(h, length, ftype, ch)
        assert bytes(ffi.buffer(h)) == link.header(ftype, ch, length)
    assert (lib.FP_LINK_DATA, lib.FP_LINK_CREDIT, lib.FP_LINK_SHM_DATA) == (link.DATA, link.CREDIT, link.SHM_DATA)


def test_display_error_codes_come_from_the_xml() -> None:
    from wlproxy._codec import lib
    from wlproxy.core import codec
    from wlproxy.core.protocol import load
    enum = load()["wl_display"].enums["error"]
    assert (codec.INVALID_OBJECT, codec.INVALID_METHOD, codec.NO_MEMORY, codec.IMPLEMENTATION) == \
        (enum["invalid_object"], enum["invalid_method"], enum["no_memory"], enum["implementation"])
    assert lib.WLC_ERR_NO_MEMORY == enum["no_memory"]
