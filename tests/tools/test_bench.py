"""``wlproxy bench --quick`` as a smoke test: every configuration runs every
quick scenario and produces sane, non-zero figures.  No timing assertions:
speed targets are checked in the bench output, not here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pywayland")
pytest.importorskip("numpy")

from wlproxy.tools.bench.placement import Placement  # noqa: E402
from wlproxy.tools.weston import weston_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick(tmp_path: Path) -> None:
    reason = weston_available()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "wlproxy", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "quick.json").read_text())
    assert (out / "quick.txt").read_text().startswith("wlproxy bench")
    assert (out / "quick.png").stat().st_size > 10_000
    configs = ["direct", "wlproxy", "floor"] + (["waypipe"] if shutil.which("waypipe") else [])
    assert set(record["configs"]) == set(configs) | {"relays"}
    scenarios = {v["scenario"] for v in record["variants"]}
    assert scenarios == {"frame", "roundtrip", "storm", "clients"}
    assert record["machine"]["cpus"] and record["versions"]["weston"]
    for v in record["variants"]:
        res = record["results"][v["key"]]
        want = set(configs) | ({"relays"} if v["scenario"] == "roundtrip" else set())
        assert set(res) == want, v["key"]
        for cfg, r in res.items():
            where = f"{v['key']} / {cfg}"
            assert "error" not in r, f"{where}: {r.get('error')}"
            s = r["summary"]
            assert s["sync"]["n"] == len(r["sync"]) > 0, where
            assert 0 < s["sync"]["median"] <= s["sync"]["p90"] <= s["sync"]["p99"] < 5.0, where
            if v["scenario"] in ("frame", "storm", "clients"):
                assert s["fps"] > 0 and s["mbps"] > 0, where
            if v["scenario"] in ("frame", "storm") and cfg != "floor":
                assert s["presented"] and 0 < s["presented"]["median"] < 5.0, where
            if cfg != "direct":
                cpu = s["cpu_s_per_frame"]
                assert set(cpu) == {"vm", "host"} and sum(cpu.values()) > 0, where
                assert all(x >= 0 for x in cpu.values()), where
                rss = s["peak_rss_bytes"]
                assert set(rss) == {"vm", "host"} and all(x > 1 << 20 for x in rss.values()), where
            if cfg in ("wlproxy", "waypipe", "relays"):
                assert "overhead" in s and "x_floor" in s, where
    placement = Placement.split()
    if placement is not None:  # each side's processes ran on that side's CPUs only
        assert record["placement"] == placement.describe()
        assert set(record["affinity"]["compositor"]) == placement.host
        for cfg in configs:
            got = record["affinity"][cfg]
            assert set(got) == ({"vm"} if cfg == "direct" else {"vm", "host"}), cfg
            assert set(got["vm"]) == placement.vm and set(got.get("host", placement.host)) == placement.host, cfg
    names = {t["target"].split(",")[0] for t in record["targets"]}
    assert {"roundtrip", "clients"} <= names
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_has(pid, record["work_dir"])]
    assert not left, f"processes of the bench still running: {left}"


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False
