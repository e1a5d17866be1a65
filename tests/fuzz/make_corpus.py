"""Write the seed corpus (``tests/fuzz/corpus/``): guest link streams that
reach every part of the host half the fuzzer should explore.

    .venv/bin/python tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from wlproxy.core import link, wire  # noqa: E402
from wlproxy.core.codec import default_tables  # noqa: E402

P = default_tables().proto
HELLO = link.hello_frame(1 << 18, "seed")
# the fake compositor's global names (see harness.GLOBALS)
COMP, SHM, WM, SEAT, DDM, PSEL, OUT, VIEWP, SCREENSHOOTER, DMABUF, SUBCOMP = range(1, 12)


def m(obj: int, iface: str, name: str, *args) -> bytes:
    return wire.encode(obj, P[iface].message(0, name), list(args))[0]


def bind(name: int, iface: str, version: int, new: int) -> bytes:
    return m(2, "wl_registry", "bind", name, wire.Untyped((iface, version, new)))


def data(ch: int, *msgs: bytes) -> bytes:
    return link.frame(link.DATA, ch, b"".join(msgs))


def start(ch: int = 1) -> bytes:
    return link.frame(link.OPEN, ch, b"seed") + data(ch, m(1, "wl_display", "get_registry", 2),
                                                     m(1, "wl_display", "sync", 3))


SEEDS: dict[str, bytes] = {}

SEEDS["registry"] = HELLO + start()

SEEDS["toplevel-title"] = HELLO + start() + data(
    1, bind(COMP, "wl_compositor", 4, 4), bind(WM, "xdg_wm_base", 2, 5),
    m(4, "wl_compositor", "create_surface", 6), m(5, "xdg_wm_base", "get_xdg_surface", 7, 6),
    m(7, "xdg_surface", "get_toplevel", 8), m(8, "xdg_toplevel", "set_title", "[host] title \u202e"),
    m(8, "xdg_toplevel", "set_app_id", "org.example.App"), m(6, "wl_surface", "commit"),
    m(1, "wl_display", "sync", 9))

SEEDS["shm-buffer"] = HELLO + start() + data(1, bind(COMP, "wl_compositor", 4, 4), bind(SHM, "wl_shm", 1, 5)) + \
    link.fd_shm_frame(1, 1, 65536) + data(
        1, m(5, "wl_shm", "create_pool", 6, None, 65536), m(6, "wl_shm_pool", "create_buffer", 7, 0, 64, 64, 256, 1),
        m(4, "wl_compositor", "create_surface", 8), m(8, "wl_surface", "attach", 7, 0, 0),
        m(8, "wl_surface", "damage_buffer", 0, 0, 64, 64)) + \
    link.shm_data_header(1, 1, 0, 256) + b"\xab" * 256 + data(
        1, m(8, "wl_surface", "commit"), m(6, "wl_shm_pool", "resize", 131072),
        m(6, "wl_shm_pool", "destroy"), m(7, "wl_buffer", "destroy")) + \
    link.u32_frame(link.SHM_FORGET, 1, 1)

SEEDS["clipboard"] = HELLO + start() + data(
    1, bind(SEAT, "wl_seat", 5, 4), bind(DDM, "wl_data_device_manager", 3, 5),
    m(5, "wl_data_device_manager", "get_data_device", 6, 4), m(5, "wl_data_device_manager", "create_data_source", 7),
    m(7, "wl_data_source", "offer", "text/plain"), m(6, "wl_data_device", "set_selection", 7, 1),
    bind(COMP, "wl_compositor", 4, 8), m(8, "wl_compositor", "create_surface", 9),
    m(6, "wl_data_device", "start_drag", 7, 9, 0, 2), bind(PSEL, "zwp_primary_selection_device_manager_v1", 1, 10),
    m(10, "zwp_primary_selection_device_manager_v1", "get_device", 11, 4),
    m(11, "zwp_primary_selection_device_v1", "set_selection", 0, 1)) + \
    link.u32_frame(link.FD_PIPE, 1, 5) + link.pipe_data_header(1, 5, 4) + b"data" + \
    link.u32_frame(link.PIPE_CLOSE, 1, 5) + link.pipe_credit_frame(1, 0x80000000, 4)

SEEDS["two-clients"] = HELLO + start(1) + start(2) + link.credit_frame(1, 0) + \
    link.close_frame(1, 0, "bye") + data(2, m(1, "wl_display", "sync", 4)) + link.frame(link.OPEN, 3, b"")

SEEDS["denied-binds"] = HELLO + start() + data(
    1, bind(SCREENSHOOTER, "weston_screenshooter", 1, 4)) + start(2) + data(2, bind(OUT, "wl_output", 9, 4)) + \
    start(3) + data(3, bind(99, "wl_compositor", 1, 4))

SEEDS["limits"] = HELLO + start() + data(1, bind(COMP, "wl_compositor", 4, 4), bind(SHM, "wl_shm", 1, 5)) + \
    link.fd_shm_frame(1, 1, 1 << 40) + data(1, m(5, "wl_shm", "create_pool", 6, None, 0x7FFFFFFF)) + \
    start(2) + data(2, bind(COMP, "wl_compositor", 4, 4), *[m(4, "wl_compositor", "create_region", 5 + i)
                                                            for i in range(50)])

SEEDS["forged"] = HELLO + start() + data(1, m(77, "wl_surface", "commit")) + start(2) + \
    data(2, m(1, "wl_display", "sync", 0xFF000001)) + start(3) + data(3, b"\x01\x00\x00\x00\x00\x00\x04\x00")

SEEDS["subsurface-viewport"] = HELLO + start() + data(
    1, bind(COMP, "wl_compositor", 4, 4), bind(SUBCOMP, "wl_subcompositor", 1, 5), bind(VIEWP, "wp_viewporter", 1, 6),
    m(4, "wl_compositor", "create_surface", 7), m(4, "wl_compositor", "create_surface", 8),
    m(5, "wl_subcompositor", "get_subsurface", 9, 8, 7), m(6, "wp_viewporter", "get_viewport", 10, 8),
    m(10, "wp_viewport", "set_destination", 10, 10), m(9, "wl_subsurface", "set_position", 3, 4))


def main() -> None:
    out = HERE / "corpus"
    out.mkdir(exist_ok=True)
    for name, blob in SEEDS.items():
        (out / f"{name}.bin").write_bytes(blob)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
