"""``vm image`` takes whichever generic kernel package the distribution has, asking a
(stand-in) apt-cache: Debian 12's, a newer Debian's, Ubuntu's, never a cloud or debug one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wlproxy.vm import image

APT = """#!/bin/sh
case "$1 $2" in
  "depends linux-image-amd64") [ -n "$META" ] && printf 'linux-image-amd64\\n  Depends: %s\\n' "$META" || exit 100 ;;
  "depends linux-image-generic") [ -n "$UBUNTU" ] && printf 'linux-image-generic\\n  Depends: %s\\n' "$UBUNTU" || exit 100 ;;
  "search --names-only") printf '%s\\n' $SEARCH | sed 's/$/ - Linux kernel/' ;;
  "policy"*) printf '%s:\\n  Installed: (none)\\n  Candidate: 1.0\\n' "$2" ;;
esac
"""


@pytest.fixture
def apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "apt-cache").write_text(APT)
    (tmp_path / "apt-cache").chmod(0o755)
    (tmp_path / "dpkg").write_text("#!/bin/sh\necho amd64\n")
    (tmp_path / "dpkg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for k in ("META", "UBUNTU", "SEARCH"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


@pytest.mark.parametrize("env,want", [
    ({"META": "linux-image-6.1.0-28-amd64"}, "linux-image-6.1.0-28-amd64"),
    ({"META": "linux-image-6.12.12+bpo-amd64"}, "linux-image-6.12.12+bpo-amd64"),
    ({"UBUNTU": "linux-image-6.8.0-31-generic"}, "linux-image-6.8.0-31-generic"),
    ({"SEARCH": "linux-image-6.1.0-9-cloud-amd64 linux-image-6.9.7-1-amd64 linux-image-6.10.1-1-amd64-dbg "
                "linux-image-6.10.1-1-amd64-unsigned linux-image-6.5.0-2-amd64"}, "linux-image-6.9.7-1-amd64"),
])
def test_picks_the_generic_kernel(apt: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], want: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert image.pick_kernel_package() == (want, "1.0")


def test_no_kernel_is_a_clear_error(apt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCH", "linux-image-6.1.0-9-cloud-amd64")
    with pytest.raises(image.ImageError, match="no generic kernel package"):
        image.pick_kernel_package()
