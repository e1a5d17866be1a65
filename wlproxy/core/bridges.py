"""Which fd-carrying messages the link can stand in for.

The XML says where fds travel but not what they are; this is the one place
that says it.  A global whose protocol (including every interface it can
create) carries any other fd cannot be offered across the link.
"""

from __future__ import annotations

import functools

from wlproxy.core.protocol import Protocol, load

SHM_POOL = frozenset({("wl_shm", "create_pool")})
KEYMAP = frozenset({("wl_keyboard", "keymap")})
# The fd is the write end of a pipe, for whoever receives the message.
PIPES = frozenset({
    ("wl_data_offer", "receive"),
    ("wl_data_source", "send"),
    ("zwp_primary_selection_offer_v1", "receive"),
    ("zwp_primary_selection_source_v1", "send"),
})
BRIDGED = SHM_POOL | KEYMAP | PIPES


@functools.cache
def _bridgeable(proto: Protocol, name: str) -> bool:
    for iface_name in proto.children(name):
        iface = proto[iface_name]
        for m in iface.requests + iface.events:
            if m.nfds and (iface_name, m.name) not in BRIDGED:
                return False
    return True


def bridgeable(name: str, proto: Protocol | None = None) -> bool:
    """True if every fd the global ``name`` can ever carry has a stand-in."""
    proto = proto or load()
    return name in proto and _bridgeable(proto, name)
