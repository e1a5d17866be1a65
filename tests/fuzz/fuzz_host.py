"""Coverage-guided fuzzing (atheris) of the host half's link and codec input.

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_host.py -max_total_time=600 /tmp/wlproxy-corpus tests/fuzz/corpus

Arguments are libFuzzer's: the first directory collects new inputs, the
others (the seeds in tests/fuzz/corpus) are read.  See harness.py for what one
input is and which invariants turn it into a finding; a finding is written to
./crash-<sha1> and can be replayed with ``python tests/fuzz/fuzz_host.py crash-<sha1>``.
Python code (wlproxy.*) is instrumented for coverage; the C codec runs
uninstrumented (its behaviour still shows through the Python paths it drives).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["wlproxy"]):
    import harness


def one_input(data: bytes) -> None:
    harness.run_one(data)


def main() -> None:
    logging.disable(logging.CRITICAL)  # every input is a hostile guest: the logs would drown the fuzzer
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
