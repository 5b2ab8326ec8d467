"""Regenerate tests/sieve/corpus/expected.json from the live sieve-test: python -m tests.sieve.record"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from tests.sieve.oracle import EXPECTED, SieveTest, load_pairs


def main() -> int:
    binary = shutil.which("sieve-test")
    if binary is None:
        print("sieve-test not found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as d:
        oracle = SieveTest(binary, Path(d))
        data = {p.name: oracle.run(p) for p in load_pairs()}
    EXPECTED.write_text(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{len(data)} pairs recorded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
