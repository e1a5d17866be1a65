"""cffi builder (API mode) for wlproxy's C hot paths: the wire codec and the
damage copy/diff routines.  Built by ``pip install`` via ``cffi_modules`` (setup.py)."""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
TOP = HERE.parent.parent  # setuptools runs the build from the project root
SOURCES = ["wlcodec.c", "shm.c", "surface.c", "fastpath.c", "fastloop.c"]
HEADERS = ["wlcodec.h", "shm.h", "surface.h", "fastpath.h", "fastloop.h"]


def _cdef_text() -> str:
    """The headers minus preprocessor lines; #define constants become cdef ``#define X ...``."""
    out = []
    for h in HEADERS:
        for line in (HERE / h).read_text().splitlines():
            m = re.match(r"#define\s+(\w+)\s+(\S+)", line)
            if m:
                out.append(f"#define {m.group(1)} {m.group(2) if m.group(2).isdigit() else '...'}")
            elif not line.startswith("#"):
                out.append(line)
    return "\n".join(out)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "wlproxy._codec",
    "#include <stdint.h>\n#include <stddef.h>\n" + "".join(f'#include "{h}"\n' for h in HEADERS),
    sources=[str((HERE / s).relative_to(TOP)) for s in SOURCES],
    include_dirs=[str(HERE.relative_to(TOP))],
    extra_compile_args=["-O2", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
