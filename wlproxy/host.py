"""``wlproxy host``: the host half, the trust boundary in front of weston.

It accepts links from one VM's guest half (on cloud-hypervisor's hybrid
vsock socket ``<vsock socket>_<port>``, or any Unix socket), and gives each
guest client its own ordinary connection to weston.  Everything read from the
link is validated: the link framing by ``LinkDecoder``, every Wayland message
by the codec, every fd stand-in against the message that consumes it.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import socket
import struct
from dataclasses import dataclass

from wlproxy import bridges, link, wire
from wlproxy.channel import Channel
from wlproxy.cli import UserError
from wlproxy.codec import INVALID_METHOD, INVALID_OBJECT, NO_MEMORY, Record
from wlproxy.fdsock import close_fds
from wlproxy.logs import audit
from wlproxy.loop import Loop
from wlproxy.protocol import EVENT, REQUEST
from wlproxy.relay import display_error
from wlproxy.session import LinkSession
from wlproxy.shm import BYTES_PER_PIXEL, HostPool
from wlproxy.transport import accepted, is_listening, listen, parse
from wlproxy.wlsocket import SocketError, connect_display

log = logging.getLogger("wlproxy.host")

WL_SHM_INVALID_STRIDE, WL_SHM_INVALID_FD = 1, 2


@dataclass
class HostLimits:
    """Resource limits enforced on each VM (the policy may change them)."""

    clients: int = 64
    objects_per_client: int = 100_000
    pool_bytes_per_client: int = 1 << 30
    pool_bytes_per_vm: int = 2 << 30
    max_keymap: int = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", required=True, metavar="PATH",
                   help="where the guest half connects: cloud-hypervisor's <vsock socket>_<port> "
                   "(e.g. /run/vm/NAME/vsock_6000), unix:PATH, or fd:N for an inherited socket")
    p.add_argument("--vm", default="vm", metavar="NAME", help="the VM's name, for logs and policy (default: %(default)s)")
    p.add_argument("--display", metavar="NAME", help="weston's socket (default: $WAYLAND_DISPLAY)")
    p.add_argument("--policy", metavar="FILE", help="policy file (default: looked up by VM name)")


class HostChannel(Channel):
    local_dir = EVENT

    def __init__(self, owner: "HostLink", ch: int, sock: socket.socket):
        super().__init__(owner, ch, sock, window=owner.window, peer_window=owner.peer_window,
                         name=f"{owner.vm} client {ch}")
        self.codec.set_max_objects(owner.limits_host.objects_per_client)
        self.pools: dict[int, HostPool] = {}      # link key -> pool
        self.pool_objs: dict[int, HostPool] = {}  # wl_shm_pool id -> pool
        self.pool_bytes = 0
        self.visible: dict[int, tuple[str, int]] = {}  # global name -> (interface, version)
        self.hidden: set[int] = set()
        r, e = self.handlers[REQUEST], self.handlers[EVENT]
        r[("wl_registry", "bind")] = self.bind
        r[("wl_shm", "create_pool")] = self.create_pool
        r[("wl_shm_pool", "resize")] = self.pool_resize
        r[("wl_shm_pool", "create_buffer")] = self.create_buffer
        r[("wl_shm_pool", "destroy")] = self.pool_destroy
        e[("wl_registry", "global")] = self.global_
        e[("wl_registry", "global_remove")] = self.global_remove
        e[("wl_keyboard", "keymap")] = self.keymap
        proto = self.codec.tables.proto
        for iface in proto.interfaces:
            for m in iface.requests:
                if m.nfds and (iface.name, m.name) not in r:
                    r[(iface.name, m.name)] = self.pipe_request if (iface.name, m.name) in bridges.PIPES else self.bad_fd_request
            for m in iface.events:
                if m.nfds and (iface.name, m.name) not in e:
                    e[(iface.name, m.name)] = self.pipe_event if (iface.name, m.name) in bridges.PIPES else self.bad_fd_event
        self.intercept()

    # -- errors --------------------------------------------------------------
    def client_error(self, obj: int, code: int, text: str, *, audit_event: str = "protocol_violation") -> None:
        """A protocol error for this guest client: it gets wl_display.error, its
        weston connection closes, the VM's other clients go on."""
        if self.closed:
            return
        log.warning("%s: %s", self.name, text)
        audit(audit_event, vm=self.owner.vm, client=self.ch, error=text)
        self.pending.clear()
        w = self.owner.writer
        err = display_error(obj, code, text)
        w.send(self.ch, link.header(link.DATA, self.ch, len(err)) + err)
        w.send(self.ch, link.close_frame(self.ch, 1, text))
        self.close(text, notify=False, keep_queued=True)

    def remote_error(self, rec: Record, text: str) -> None:
        self.client_error(rec.obj, rec.code, text)

    def local_error(self, rec: Record, text: str) -> None:
        log.error("%s: invalid event from the compositor: %s", self.name, text)
        self.close(f"invalid event from the compositor: {text}", notify=True)

    def _pop_kind(self, want: str, obj: int) -> tuple | None:
        kind = self.kinds.popleft()
        if kind[0] != want:
            self.client_error(1, INVALID_METHOD, f"object {obj}: fd record of kind {kind[0]}, expected {want}")
            return None
        return kind

    def bad_fd_request(self, obj: int, data: memoryview, fds: list) -> None:
        close_fds(fds)
        self.client_error(1, INVALID_METHOD, f"object {obj}: this request's fd cannot cross the link")

    def bad_fd_event(self, obj: int, data: memoryview, fds: list) -> None:
        close_fds(fds)
        log.error("%s: compositor sent an fd the link cannot carry (object %d)", self.name, obj)
        self.close("compositor sent an fd the link cannot carry", notify=True)

    # -- registry ------------------------------------------------------------
    def global_(self, obj: int, data: memoryview, fds: list) -> None:
        msg = self.codec.tables.proto["wl_registry"].message(EVENT, "global")
        name, iface, version = wire.decode(msg, data)
        if self.owner.global_allowed(iface):
            self.visible[name] = (iface, version)
            self.queue_data(data)
        else:
            self.hidden.add(name)

    def global_remove(self, obj: int, data: memoryview, fds: list) -> None:
        (name,) = struct.unpack_from("=I", data, 8)
        if name in self.visible:
            del self.visible[name]
            self.queue_data(data)
        self.hidden.discard(name)

    def bind(self, obj: int, data: memoryview, fds: list) -> None:
        msg = self.codec.tables.proto["wl_registry"].message(REQUEST, "bind")
        name, new = wire.decode(msg, data)
        g = self.visible.get(name)
        if g is None:
            audit("bind_denied", vm=self.owner.vm, client=self.ch, interface=new.interface, name=name)
            self.client_error(obj, INVALID_OBJECT, f"invalid global {new.interface} ({name})", audit_event="bind_denied")
            return
        if g[0] != new.interface:
            self.client_error(obj, INVALID_OBJECT,
                              f"invalid interface for global {name}: have {g[0]}, wanted {new.interface}")
            return
        if new.version > g[1]:
            self.client_error(obj, INVALID_OBJECT,
                              f"invalid version for global {g[0]} ({name}): have {g[1]}, wanted {new.version}")
            return
        self.local.write(data)

    # -- shm -----------------------------------------------------------------
    def new_pool(self, key: int, size: int) -> None:
        lim = self.owner.limits_host
        if key in self.pools:
            raise link.LinkError(f"{self.name}: pool key {key} reused")
        if size <= 0 or self.pool_bytes + size > lim.pool_bytes_per_client or \
                self.owner.pool_bytes + size > lim.pool_bytes_per_vm:
            # refuse as a protocol error for this client when its create_pool arrives
            self.remote_fd(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), ("refused", size))
            return
        try:
            pool = HostPool(key, size, f"wlproxy-{self.owner.vm}")
        except OSError as e:
            raise link.LinkError(f"cannot create a pool of {size} bytes: {e.strerror}") from None
        self.pools[key] = pool
        self._account(size)
        self.remote_fd(pool.dup_fd(), ("shm", pool))

    def _account(self, n: int) -> None:
        self.pool_bytes += n
        self.owner.pool_bytes += n

    def create_pool(self, obj: int, data: memoryview, fds: list) -> None:
        pool_id, size = struct.unpack_from("=Ii", data, 8)
        kind = self.kinds.popleft()
        if kind[0] == "refused":
            close_fds(fds)
            self.client_error(obj, NO_MEMORY, f"pool of {kind[1]} bytes is over the shm limit",
                              audit_event="limit_hit")
            return
        if kind[0] != "shm" or kind[1].size != size:
            close_fds(fds)
            self.client_error(obj, WL_SHM_INVALID_FD, "create_pool: the fd record does not match this pool")
            return
        self.pool_objs[pool_id] = kind[1]
        self.local.write(data, fds)

    def pool_resize(self, obj: int, data: memoryview, fds: list) -> None:
        (size,) = struct.unpack_from("=i", data, 8)
        pool = self.pool_objs[obj]
        if size > pool.size:
            lim = self.owner.limits_host
            grow = size - pool.size
            if self.pool_bytes + grow > lim.pool_bytes_per_client or self.owner.pool_bytes + grow > lim.pool_bytes_per_vm:
                self.client_error(obj, NO_MEMORY, f"resize to {size} bytes is over the shm limit", audit_event="limit_hit")
                return
            try:
                pool.resize(size)
            except (OSError, ValueError) as e:
                self.client_error(obj, NO_MEMORY, f"cannot resize the pool: {e}")
                return
            self._account(grow)
        self.local.write(data)

    def create_buffer(self, obj: int, data: memoryview, fds: list) -> None:
        _, offset, width, height, stride, fmt = struct.unpack_from("=Iiiiii", data, 8)
        pool = self.pool_objs[obj]
        bpp = BYTES_PER_PIXEL.get(fmt, 1)
        if width <= 0 or height <= 0 or stride < width * bpp or offset < 0 or \
                offset + stride * height > pool.size:
            self.client_error(obj, WL_SHM_INVALID_STRIDE,
                              f"invalid buffer: offset {offset} + stride {stride} x height {height} "
                              f"runs past the pool of {pool.size} bytes (or bad width {width})")
            return
        self.local.write(data)

    def pool_destroy(self, obj: int, data: memoryview, fds: list) -> None:
        pool = self.pool_objs.pop(obj, None)
        if pool is not None:
            pool.close_fd()
        self.local.write(data)

    def forget_pool(self, key: int) -> None:
        pool = self.pools.pop(key, None)
        if pool is None:
            raise link.LinkError(f"{self.name}: SHM_FORGET for unknown pool {key}")
        for oid, p in list(self.pool_objs.items()):
            if p is pool:  # the guest may not forget a pool it can still resize
                raise link.LinkError(f"{self.name}: SHM_FORGET for pool {key} still in use by wl_shm_pool@{oid}")
        self._account(-pool.size)
        pool.close()

    # -- keymaps and pipes ---------------------------------------------------
    def keymap(self, obj: int, data: memoryview, fds: list) -> None:
        _, size = struct.unpack_from("=II", data, 12)
        fd = fds[0]
        try:
            if size > self.owner.limits_host.max_keymap:
                raise OSError("keymap too large")
            blob = b""
            if size:
                with mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ) as mm:
                    blob = mm[:size]
        except (OSError, ValueError) as e:
            log.error("%s: cannot read the keymap: %s", self.name, e)
            blob = b""
        finally:
            os.close(fd)
        self.queue_frame(link.frame(link.FD_KEYMAP, self.ch, blob))
        if len(blob) != size:  # keep the event consistent with what we could carry
            hdr = bytes(data[:16]) + struct.pack("=I", len(blob))
            self.queue_data(hdr)
        else:
            self.queue_data(data)

    def pipe_event(self, obj: int, data: memoryview, fds: list) -> None:
        pid = self.owner.pipes.export_sink(self.ch, fds[0])
        self.queue_frame(link.u32_frame(link.FD_PIPE, self.ch, pid))
        self.queue_data(data)

    def pipe_request(self, obj: int, data: memoryview, fds: list) -> None:
        if self._pop_kind("pipe", obj) is None:
            close_fds(fds)
            return
        self.local.write(data, fds)

    def release(self) -> None:
        for pool in self.pools.values():
            self._account(-pool.size)
            pool.close()
        self.pools.clear()
        self.pool_objs.clear()


class HostLink(LinkSession):
    side = "host"
    accept = frozenset({link.HELLO, link.ERROR, link.OPEN, link.CLOSE, link.DATA, link.CREDIT, link.FD_SHM,
                        link.SHM_DATA, link.SHM_FORGET, link.FD_PIPE, link.PIPE_DATA, link.PIPE_CLOSE,
                        link.PIPE_CREDIT})
    pipe_id_base = 0x80000000

    def __init__(self, server: "HostServer", fd: int, n: int):
        self.server = server
        self.limits_host = server.limits
        self.last_opened = 0
        self.pool_bytes = 0
        super().__init__(server.loop, fd, name=f"{server.vm} link {n}", vm=server.vm)

    def peer_pipe_id_ok(self, pid: int) -> bool:
        return 0 < pid < 0x80000000

    def global_allowed(self, iface: str) -> bool:
        return self.server.global_allowed(iface)

    def channel_for(self, f: link.Frame):
        if f.type == link.OPEN:
            self.open_channel(f.channel)
            return None
        ch = self.channels.get(f.channel)
        if ch is None and f.channel > self.last_opened:
            raise link.LinkError(f"{link.NAMES[f.type]} frame for channel {f.channel}, which was never opened")
        return ch

    def open_channel(self, n: int) -> None:
        if n <= self.last_opened:
            raise link.LinkError(f"OPEN for channel {n}: channel ids must increase (last {self.last_opened})")
        self.last_opened = n
        if len(self.channels) >= self.limits_host.clients:
            audit("limit_hit", vm=self.vm, limit="clients", value=self.limits_host.clients)
            err = display_error(1, NO_MEMORY, f"wlproxy: too many clients for VM {self.vm}")
            self.writer.send(n, link.header(link.DATA, n, len(err)) + err)
            self.writer.send(n, link.close_frame(n, 1, "too many clients"))
            return
        try:
            sock = connect_display(self.server.display)
        except SocketError as e:
            log.error("%s: %s", self.name, e)
            self.writer.send_urgent(link.close_frame(n, 2, "the compositor is not reachable"))
            return
        self.channels[n] = HostChannel(self, n, sock)
        log.info("%s: client %d connected", self.name, n)

    def handle_frame(self, ch: HostChannel, f: link.Frame) -> None:
        if f.type == link.FD_SHM:
            key, size = link.parse_fd_shm(f.payload)
            ch.new_pool(key, size)
        elif f.type == link.SHM_FORGET:
            ch.forget_pool(link.u32(f.payload, "SHM_FORGET"))
        else:
            super().handle_frame(ch, f)

    def _pool(self, channel: int, key: int) -> HostPool | None:
        ch = self.channels.get(channel)
        if ch is None:
            if channel > self.last_opened:
                raise link.LinkError(f"SHM_DATA for channel {channel}, which was never opened")
            return None
        pool = ch.pools.get(key)
        if pool is None:
            raise link.LinkError(f"SHM_DATA for unknown pool {key} on channel {channel}")
        return pool

    def resolve_shm(self, channel: int, key: int, offset: int, length: int) -> memoryview | None:
        try:
            pool = self._pool(channel, key)
        except link.LinkError:
            return None  # the chunk event will report it
        return pool.region(offset, length) if pool is not None else None

    def shm_chunk(self, c: link.ShmChunk) -> None:
        pool = self._pool(c.channel, c.key)
        if pool is None:
            return
        dst = pool.region(c.offset, len(c.data))
        if dst is None:
            raise link.LinkError(f"SHM_DATA of {len(c.data)} bytes at {c.offset} is outside pool {c.key} "
                                 f"({pool.size} bytes)")
        dst[:] = c.data
        dst.release()

    def on_shutdown(self, reason: str) -> None:
        self.server.link_closed(self)


class HostServer:
    def __init__(self, loop: Loop, sock: socket.socket, vm: str, display: str | None, limits: HostLimits,
                 allowed=None):
        self.loop = loop
        self.sock = sock
        self.vm = vm
        self.display = display
        self.limits = limits
        self.links: set[HostLink] = set()
        self.count = 0
        self._allowed = allowed
        if is_listening(sock):
            loop.add_reader(sock.fileno(), self._accept)
        else:
            self._start(sock)

    def global_allowed(self, iface: str) -> bool:
        if self._allowed is not None:
            return self._allowed(iface)
        return bridges.bridgeable(iface)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.error("accept failed: %s", e)
            return
        self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        self.count += 1
        fd = accepted(conn)
        lk = HostLink(self, fd, self.count)
        if not lk.closed:
            self.links.add(lk)
            log.info("VM %s: link %d accepted", self.vm, self.count)

    def link_closed(self, lk: HostLink) -> None:
        self.links.discard(lk)


def run(args: argparse.Namespace) -> int:
    try:
        ep = parse(args.listen, listening=True)
        sock = listen(ep)
    except (ValueError, SocketError) as e:
        raise UserError(str(e)) from None
    loop = Loop()
    server = HostServer(loop, sock, args.vm, args.display, HostLimits())
    log.info("VM %s: host half listening on %s, compositor %s", args.vm, ep, args.display or os.environ.get("WAYLAND_DISPLAY", "wayland-0"))
    loop.stop_on_signals()
    try:
        loop.run()
    finally:
        for lk in list(server.links):
            lk.shutdown("host half stopping", violation=False)
        sock.close()
        if ep.kind == "unix":
            try:
                os.unlink(ep.value)
            except FileNotFoundError:
                pass
    return 0
