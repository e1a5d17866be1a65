"""Shared pieces of the policy tests: a host half logging JSON audit lines,
policy files, audit-line parsing and the host half's memory use."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Mapping

from wlproxy.vm.procs import NotReady, unix_accepts, wait_until
from wlproxy.tools.pair import HostHalf, ProxyPair, wlproxy_command

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = str(Path(__file__).resolve().parent / "policy_clients.py")


class PolicyHost(HostHalf):
    """``wlproxy --log-format FMT -v host ... --policy FILE`` (started and
    stopped here, so only HostHalf's constructor and attributes are relied on)."""

    def __init__(self, compositor_env: Mapping[str, str], run_dir: Path, vm: str, policy: Path | None,
                 *, log_format: str = "json", log_path: Path | None = None):
        super().__init__(compositor_env, run_dir, vm, extra=["--policy", str(policy)] if policy else [],
                         log_path=log_path)
        self.log_format = log_format
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "PolicyHost":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cmd = wlproxy_command() + ["--log-format", self.log_format, "-v", "host", "--listen", str(self.link_path),
                                   "--vm", self.vm, *self.extra]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: unix_accepts(self.link_path), timeout, "host half", self.proc)
        except NotReady:
            self.stop()
            raise RuntimeError(f"host half did not start:\n{self.log_text()[-2000:]}") from None
        return self

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode if self.proc is not None else None

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def audit(self, event: str | None = None) -> list[dict]:
        return audit_events(self.log_text(), event)

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the host half, in bytes."""
        assert self.proc is not None
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
        return out


def policy_pair(compositor_env: Mapping[str, str], base: Path, vm: str, policy_text: str | None) -> ProxyPair:
    """A ProxyPair (a context manager: ``with policy_pair(...) as pair``) whose
    host half runs with this policy and JSON logs."""
    pol = None
    if policy_text is not None:
        pol = base / f"{vm}.toml"
        base.mkdir(parents=True, exist_ok=True)
        pol.write_text(policy_text)
    pair = ProxyPair(compositor_env, base_dir=base, vm=vm)
    pair.host = PolicyHost(compositor_env, pair.host.run_dir, vm, pol, log_path=base / "host.log")
    return pair


def audit_events(text: str, event: str | None = None) -> list[dict]:
    out = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("logger") == "wlproxy.audit" and (event is None or rec.get("event") == event):
            out.append(rec)
    return out
