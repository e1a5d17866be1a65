"""The whole mission in one test: a Linux guest under qemu (TCG), the guest half inside it,
and its windows on the host's weston.

Through ``wlproxy vm start --hypervisor qemu`` (see :mod:`hostvm.scenario`): weston headless
(pixman) on the host; the guest boots; the pywayland pattern client inside the guest draws a
known pattern; from the host, weston has a toplevel titled ``[<vm>] ...`` (weston's own
``proto`` log scope: every request as weston decoded it) whose pixels match the pattern exactly
(weston's screenshooter); ``weston-simple-shm`` then runs in the guest for a few seconds without
error; ``wlproxy vm stop`` ends it all, the host half included, and leaves the run dir clean.

Prints the boot time and the time to the first frame (``pytest tests/test_appvm_e2e.py -s``).
Skips only when qemu cannot run or the guest kernel package cannot be downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("pywayland")

from hostvm import guestinit, image, qemu  # noqa: E402
from hostvm.procs import ProcRef  # noqa: E402
from hostvm.scenario import AppVmSession, toplevel_titles, weston_requests  # noqa: E402
from wlproxy.clients.pattern import frame_pixels  # noqa: E402
from wlproxy.clients.screenshot import screenshot  # noqa: E402

VM = "e2e"
TITLE = "wlproxy pattern"
WIDTH, HEIGHT, PATTERN = 240, 160, "noise"
SHM_SECONDS = 4.0
BUDGET = 240.0  # seconds for the whole test, boot to clean stop


def qemu_cannot_run() -> str | None:
    try:
        exe = qemu.find_qemu()
    except qemu.QemuError as e:
        return str(e)
    try:
        subprocess.run([exe, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{exe} cannot run: {e}"
    return None


@pytest.fixture(scope="module")
def guest_image() -> image.GuestImage:
    reason = qemu_cannot_run()
    if reason:
        pytest.skip(f"qemu cannot run: {reason}")
    try:
        return image.build_image()
    except image.KernelDownloadError as e:
        pytest.skip(f"qemu cannot run: the guest kernel package cannot be downloaded: {e}")


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
        assert [t for c, t in titles if c == tagged[0]] == [f"[{VM}]", f"[{VM}] {TITLE}"], titles
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
