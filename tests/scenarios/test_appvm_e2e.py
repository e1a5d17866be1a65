"""The whole mission in one test: a Linux guest under qemu (TCG), the guest half inside it,
and its windows on the host's weston.

Through ``wlproxy vm start --hypervisor qemu`` (see :mod:`wlproxy.tools.scenario`): weston headless
(pixman) on the host; the guest boots; the pywayland pattern client inside the guest draws a
known pattern; from the host, weston has a toplevel titled ``[<vm>] ...`` (weston's own
``proto`` log scope: every request as weston decoded it) whose pixels match the pattern exactly
(weston's screenshooter); ``weston-simple-shm`` then runs in the guest for a few seconds without
error; ``wlproxy vm stop`` ends it all, the host half included, and leaves the run dir clean.

Prints the boot time and the time to the first frame (``pytest tests/scenarios/test_appvm_e2e.py -s``).
Skips only when qemu cannot run or the guest kernel package cannot be downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("pywayland")

from wlproxy.vm import guestinit  # noqa: E402
from wlproxy.vm.procs import ProcRef  # noqa: E402
from wlproxy.tools.scenario import AppVmSession, toplevel_titles, weston_requests  # noqa: E402
from wlproxy.tools.clients.pattern import frame_pixels  # noqa: E402
from wlproxy.tools.clients.screenshot import screenshot  # noqa: E402
from qemu_helpers import guest_image  # noqa: E402,F401

VM = "e2e"
TITLE = "wlproxy pattern"
WIDTH, HEIGHT, PATTERN = 240, 160, "noise"
SHM_SECONDS = 4.0
BUDGET = 240.0  # seconds for the whole test, boot to clean stop


@pytest.fixture
def base_dir():
    d = Path(tempfile.mkdtemp(prefix="wle-"))  # short: the VM's sockets live under it
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_appvm_end_to_end(weston_factory, guest_image, base_dir):
    t_begin = time.monotonic()
    weston = weston_factory(width=640, height=480, extra_args=["--logger-scopes=log,proto"])
    with AppVmSession(guest_image, weston.env(), weston.display, base_dir, name=VM, title=TITLE, width=WIDTH,
                      height=HEIGHT, pattern=PATTERN, shm_seconds=SHM_SECONDS) as vm:
        # -- boot, through the CLI -------------------------------------------------------------------
        res = vm.start()
        assert res.returncode == 0, f"vm start failed: {res.stderr}\n{vm.diagnostics()}"
        st = vm.status()
        assert st["state"] == "Running" and st["hypervisor"] == "qemu" and st["host_half"] == "up", st
        host_half = ProcRef.of(st["host_half_pid"])
        vmm = ProcRef.of(st["vmm_pid"])
        assert host_half is not None and vmm is not None, st
        assert f"vm {VM}: qemu pid {st['vmm_pid']} running, accelerator tcg" in vm.supervisor_log()
        guest_uptime = vm.wait_booted()

        # -- the pattern client inside the guest, seen from the host --------------------------------
        vm.wait_first_frame()
        expected = frame_pixels(PATTERN, WIDTH, HEIGHT, 0)
        shot, found = vm.wait_on_screen(lambda: screenshot(weston.display, weston.runtime_dir), expected)
        assert len(found) == 1, (f"the guest's {WIDTH}x{HEIGHT} {PATTERN} pattern is not on weston's screen "
                                 f"exactly once (found at {found})\n{vm.diagnostics()}")
        x, y = found[0]
        assert shot.width == 640 and shot.height == 480
        titles = toplevel_titles(weston.log_text())
        tagged = [c for c, t in titles if t == f"[{VM}] {TITLE}"]
        assert len(tagged) == 1, f"weston saw no toplevel titled '[{VM}] {TITLE}': {titles}"
        assert not [t for _, t in titles if not t.startswith(f"[{VM}]")], f"an untagged title reached weston: {titles}"
        # the same weston client (the host half's connection for the guest's client) drew the pattern
        assert weston_requests(weston.log_text(), tagged[0], "wl_surface.commit") >= 2

        assert vm.release_pattern() == 0, vm.diagnostics()

        # -- weston-simple-shm inside the guest ------------------------------------------------------
        vm.wait_simple_shm_started()
        report = vm.wait_simple_shm()
        assert report == {"ran": True, "status": 0, "stderr": "simple-shm exiting|"}, (report, vm.diagnostics())
        log = weston.log_text()
        shm_clients = [c for c, t in toplevel_titles(log) if t == f"[{VM}] simple-shm"]
        assert len(shm_clients) == 1, toplevel_titles(log)
        commits = weston_requests(log, shm_clients[0], "wl_surface.commit")
        assert commits >= 5, f"weston got only {commits} commits from weston-simple-shm in {SHM_SECONDS:g} s"
        vm.wait_idle()

        # -- stop: the host half goes too, and the run dir is clean ----------------------------------
        res = vm.stop()
        assert res.returncode == 0 and f"{VM}: stopped" in res.stdout, (res.stdout, res.stderr)
        assert not host_half.alive(), "the host half still runs after vm stop"
        assert not vmm.alive(), "qemu still runs after vm stop"
        assert not vm.paths.vm_dir.exists(), f"{vm.paths.vm_dir} left behind: {os.listdir(vm.paths.vm_dir)}"
        assert sorted(os.listdir(vm.run_dir)) == sorted(
            p.name for p in (vm.paths.serial_log, vm.paths.supervisor_log, vm.run_dir / f"{VM}.qemu.log"))
        assert vm.status()["state"] == "stopped"
        # the guest script passed every step and was then stopped by the power button
        console = vm.console()
        assert "wlproxy-run: power button pressed" in console
        assert guestinit.parse_exit_status(console) == 0, vm.diagnostics()
        assert "vm_exited event=vm_exited vm=e2e status=0" in vm.supervisor_log()

    total = time.monotonic() - t_begin
    t = vm.times
    print(f"\nappvm under TCG (qemu microvm): boot (vm start to guest half listening) "
          f"{t['guest half listening']:.2f} s [qemu running {t['vm start returned']:.2f} s, host root mounted "
          f"{t['guest root mounted']:.2f} s (guest uptime {guest_uptime:.2f} s)]; time to first frame "
          f"{t['first frame on screen']:.2f} s (committed {t['first frame committed']:.2f} s); pattern at "
          f"({x}, {y}); weston-simple-shm: {commits} commits in {SHM_SECONDS:g} s; whole test {total:.1f} s")
    print("timeline: " + vm.timing_summary())
    assert total < BUDGET


# -- restarts on the virtio-console port ---------------------------------------------------------

# A virtio-console port is one byte stream for the whole life of the VM: a guest half that
# restarts opens the stream its predecessor used, with the host half's old link still on it.
# Run by the guest's runner without its own guest half: ["/bin/sh", "-c", RESTARTS, "restarts",
# PYTHON, CONTROL_DIR, PARTIAL_FRAME]. Each client (wayland-info) runs as soon as the new guest half
# listens, so it connects while the link is still being re-established.
RESTARTS = r"""
py=$1 go=$2 partial=$3
say() { echo "wlproxy-restarts: $*"; }
start() {
    : > /tmp/guest-half.log
    "$py" -m wlproxy -v guest --link virtio-port:wlproxy.0 2>> /tmp/guest-half.log &
    g=$!
    n=0
    until grep -q "listening on" /tmp/guest-half.log; do
        sleep 0.05; n=$((n + 1))
        [ $n -lt 1200 ] || { say "the guest half did not start: $(tail -c 600 /tmp/guest-half.log)"; exit 3; }
    done
}
client() {
    if timeout 40 wayland-info > /tmp/info.out 2>&1 && grep -q "interface: 'wl_compositor'" /tmp/info.out; then
        say "$1 ok"
    else
        say "$1 FAILED: $(tail -c 300 /tmp/info.out | tr '\n' '|') guest half: $(tail -c 600 /tmp/guest-half.log | tr '\n' '|')"
    fi
}
start; client first
kill -TERM $g; wait $g; start; client after-clean-restart
kill -KILL $g; wait $g; start; client after-kill
kill -TERM $g; wait $g; "$py" -c "$partial" || say "partial frame: writer failed"
start; client after-partial-frame
say "waiting for the host half to be restarted"
until [ -e "$go/host-half-restarted" ]; do sleep 0.1; done
client after-host-half-restart
kill -TERM $g; wait $g
say "end"
"""

# Leaves the host half in the middle of a frame, as a guest half killed while writing one
# would: first a session the host half accepted (its HELLO, no hang-up), then OPEN and the
# start of a 60000-byte DATA frame; then it exits.
PARTIAL_FRAME = r"""
import os, select, time
from wlproxy.core import link
from wlproxy.io.virtio_port import wait_host_connected, wait_virtio_port
path = wait_virtio_port("wlproxy.0", 10)
for attempt in range(20):
    fd = os.open(path, os.O_RDWR)
    assert wait_host_connected(fd, 20)
    os.write(fd, link.hello_frame(1 << 18, "partial frame writer"))
    dec, got, hup, end = link.LinkDecoder(), [], False, time.monotonic() + 3
    while time.monotonic() < end and not hup:
        if select.select([fd], [], [], 0.1)[0]:
            data = os.read(fd, 65536)
            try:
                got += [f.type for f in dec.feed(data) if isinstance(f, link.Frame)]
            except link.LinkError:
                hup = True
            hup = hup or not data
    if got == [link.HELLO] and not hup:
        break
    os.close(fd)
    time.sleep(1.5)
else:
    raise SystemExit("no session with the host half")
os.write(fd, link.frame(link.OPEN, 1, b"x") + link.HEADER.pack(60000, link.DATA, 0, 1) + bytes(100))
time.sleep(0.5)
print("wlproxy-restarts: partial frame left", flush=True)
"""


@pytest.mark.slow
def test_guest_and_host_half_restarts_on_the_virtio_port(weston_factory, guest_image, base_dir):
    """A guest half restarted (cleanly, killed, or after one died in the middle of a frame) and
    a host half restarted by the supervisor: each time the next client reaches weston, although
    it connects while the link over the virtio-console port is being re-established."""
    import sys

    weston = weston_factory(width=320, height=240, debug=False)
    cmd = ["/bin/sh", "-c", RESTARTS, "restarts", sys.executable, "{control}", PARTIAL_FRAME]
    t0 = time.monotonic()
    with AppVmSession(guest_image, weston.env(), weston.display, base_dir, name="rst", guest_command=cmd,
                      with_guest_half=False) as vm:
        res = vm.start()
        assert res.returncode == 0, f"vm start failed: {res.stderr}\n{vm.diagnostics()}"
        for step in ("first", "after-clean-restart", "after-kill"):
            m = vm.wait_console(r"^wlproxy-restarts: (%s .*)$" % step, 120)
            assert m.group(1) == f"{step} ok", vm.diagnostics()
        vm.wait_console(r"^wlproxy-restarts: partial frame left", 120)
        m = vm.wait_console(r"^wlproxy-restarts: (after-partial-frame .*)$", 120)
        assert m.group(1) == "after-partial-frame ok", vm.diagnostics()

        vm.wait_console(r"^wlproxy-restarts: waiting for the host half to be restarted", 60)
        before = vm.status()
        os.kill(before["host_half_pid"], 9)
        deadline = time.monotonic() + 30
        while True:
            st = vm.status()
            if st["host_half"] == "up" and st["host_half_pid"] not in (None, before["host_half_pid"]):
                break
            assert time.monotonic() < deadline, f"the supervisor did not restart the host half: {st}"
            time.sleep(0.1)
        (vm.control / "host-half-restarted").touch()
        m = vm.wait_console(r"^wlproxy-restarts: (after-host-half-restart .*)$", 120)
        assert m.group(1) == "after-host-half-restart ok", vm.diagnostics()
        vm.wait_console(r"^wlproxy-restarts: end", 60)

        # the guest powers off by itself; the supervisor stops the host half and cleans up
        deadline = time.monotonic() + 60
        while vm.paths.vm_dir.exists():
            assert time.monotonic() < deadline, f"{vm.paths.vm_dir} still there\n{vm.diagnostics()}"
            time.sleep(0.1)
        assert guestinit.parse_exit_status(vm.console()) == 0, vm.diagnostics()
        log = vm.supervisor_log()
        assert "host_half_restarted" in log and "vm_exited event=vm_exited vm=rst status=0" in log
        # the stale links ended on the host: a second HELLO, and the frame left unfinished
        assert "second HELLO" in log and "unknown frame type 0" in log, log[-3000:]
    print(f"\nrestarts over the virtio-console port: {time.monotonic() - t0:.1f} s")
