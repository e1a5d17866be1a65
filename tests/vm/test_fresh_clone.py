"""A clone without ``shared/specs`` beside it skips the spec tests, saying why, instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_spec_tests_skip_without_the_spec(tmp_path: Path) -> None:
    env = dict(os.environ, WLPROXY_CH_SPEC=str(tmp_path / "absent.yaml"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        "tests/vm/test_hostvm_spec.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failed" not in r.stdout
    assert "skipped" in r.stdout and "cloud-hypervisor spec is not at" in r.stdout
    assert str(tmp_path / "absent.yaml") in r.stdout


def test_spec_found_beside_the_clone() -> None:
    sys.path.insert(0, str(ROOT / "tests" / "vm"))
    from test_hostvm_common import ch_spec_path

    env = os.environ.pop("WLPROXY_CH_SPEC", None)
    try:
        assert ch_spec_path() == ROOT.parent / "shared" / "specs" / "cloud-hypervisor.yaml"
    finally:
        if env is not None:
            os.environ["WLPROXY_CH_SPEC"] = env
