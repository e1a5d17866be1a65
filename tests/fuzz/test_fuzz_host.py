"""The fuzz target in the suite: every seed (and past finding) replays clean,
and a short coverage-guided run finds nothing.

The run lasts ``WLPROXY_FUZZ_SECONDS`` (default 20 s; the documented longer
run is in docs/security.md).  It needs atheris (``pip install atheris``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

SEEDS = sorted((HERE / "corpus").glob("*.bin"))


def test_seed_corpus_is_there() -> None:
    names = {p.stem for p in SEEDS}
    assert {"registry", "shm-buffer", "clipboard", "toplevel-title", "limits", "forged"} <= names
    assert any(n.startswith("regress-") for n in names)


@pytest.mark.parametrize("seed", SEEDS, ids=[p.stem for p in SEEDS])
def test_seed_replays_clean(seed: Path) -> None:
    harness.run_one(seed.read_bytes())


def test_short_fuzz_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    seconds = int(os.environ.get("WLPROXY_FUZZ_SECONDS", "20"))
    work = tmp_path / "corpus"
    work.mkdir()
    out = subprocess.run([sys.executable, str(HERE / "fuzz_host.py"), f"-max_total_time={seconds}",
                          "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={tmp_path}/", str(work),
                          str(HERE / "corpus")], capture_output=True, text=True, timeout=seconds + 120, cwd=tmp_path)
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    tail = out.stderr[-4000:]
    assert out.returncode == 0 and not crashes, f"fuzzing found something ({crashes}):\n{tail}"
    m = re.search(r"Done (\d+) runs", out.stderr)
    assert m and int(m.group(1)) > 1000, tail
    print(f"fuzz: {m.group(1)} executions in {seconds} s, {len(list(work.iterdir()))} new corpus entries")
    shutil.rmtree(work)
