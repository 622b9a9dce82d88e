"""Add up pytest's JUnit XML files into one closing line: 'tests: N passed, N failed, N skipped'."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def main(paths: list[str]) -> int:
    passed = failed = skipped = 0
    for path in paths:
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for s in suites:
            total = int(s.get("tests", 0))
            f = int(s.get("failures", 0)) + int(s.get("errors", 0))
            sk = int(s.get("skipped", 0))
            passed += total - f - sk
            failed += f
            skipped += sk
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
