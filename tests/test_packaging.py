"""``python -m build`` makes an sdist and, from it alone, a wheel; both pass ``twine check``;
the wheel depends on cffi and pyxdg only, carries the man pages and completions, and the
bench and demo name the extra to install when their dependencies are missing."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # without --sdist/--wheel, build makes the sdist, then the wheel from the unpacked sdist
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out


def test_sdist_has_what_the_wheel_build_needs(dist: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    need = {"LICENSE", "MANIFEST.in", "setup.py", "pyproject.toml", "wlproxy/c/build.py", "protocols/wayland.xml",
            "wlproxy/share/man/wlproxy.1", "wlproxy/vm/services/systemd/wlproxy-host@.service"}
    need |= {f"wlproxy/c/{p.name}" for p in (ROOT / "wlproxy" / "c").glob("*.[ch]")}
    assert need <= names, sorted(need - names)


def test_wheel_metadata_and_files(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = email.message_from_bytes(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    base = sorted(r.split(">")[0] for r in meta.get_all("Requires-Dist") if "extra ==" not in r)
    assert base == ["cffi", "pyxdg"]
    assert set(meta.get_all("Provides-Extra")) == {"bench", "demo", "test"}
    assert meta["License-Expression"] == "MIT" or meta["License"] == "MIT"
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)
    assert "wlproxy/_codec.abi3.so" in names
    for data in ("share/man/man1/wlproxy.1", "share/man/man5/wlproxy-policy.5",
                 "share/bash-completion/completions/wlproxy", "share/zsh/site-functions/_wlproxy"):
        assert any(n.endswith(f".data/data/{data}") for n in names), data
    assert not any(n.startswith("tests/") or n.endswith(".c") for n in names)


def test_twine_check_passes(dist: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr


BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {%s}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n.split(".")[0] in {%s} else real(n, *a)
from wlproxy.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command,missing,extra", [("bench", "matplotlib", "bench"), ("demo", "PIL", "demo"),
                                                   ("bench", "numpy", "bench")])
def test_missing_extra_is_one_clear_line(command: str, missing: str, extra: str) -> None:
    names = repr(missing)
    r = subprocess.run([sys.executable, "-c", BLOCK % (names, names), command], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"pip install 'wlproxy[{extra}]'" in r.stderr and f"wlproxy {command}: error" in r.stderr
