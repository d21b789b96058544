"""Per-module mutation scores from the last `mutmut run`, and the survivors docs/mutation.md does not explain.

    python docs/mutation_scores.py            # from the repository root, after mutmut run

mutmut keeps each module's results in mutants/<path>.meta; `mutmut results` lists the mutants that are
not killed one by one. This adds them up per module and checks each survivor against the justification
table of docs/mutation.md (a mutant name or an fnmatch pattern in backticks in a table row). Exit code 1
when a survivor is explained nowhere, so a new one cannot go unnoticed.
"""
from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

KILLED = {1, 3}                              # a test failed (3: pytest's internal error, also a failure)
TIMEOUT = {36, -24, 24, 152, 255}            # the tests ran out of time: mutmut counts these as caught
SURVIVED = {0}
NO_TESTS = {5, 33}                           # no selected test runs the mutated function


def justified_patterns(doc: Path) -> list[str]:
    rows = [line for line in doc.read_text().splitlines() if line.startswith("|")]
    return [p for row in rows for p in re.findall(r"`(fastdcgan\.[^`]+)`", row)]


def main() -> int:
    patterns = justified_patterns(Path("docs/mutation.md"))
    rows, unexplained = [], []
    totals = [0] * 6
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        killed = sum(c in KILLED or c in TIMEOUT for c in codes.values())
        left = [k for k, c in codes.items() if c in SURVIVED or c in NO_TESTS]
        justified = [k for k in left if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
        unexplained += [k for k in left if k not in justified]
        unchecked = sum(c is None for c in codes.values())
        n = len(codes)
        counts = [n, killed, len(left), len(justified), len(left) - len(justified), unchecked]
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        module = str(meta)[len("mutants/"):-len(".meta")]
        rows.append(f"| {module} | {n} | {killed} | {100 * killed / max(n, 1):.1f}% | {len(left)} | "
                    f"{len(justified)} | {len(left) - len(justified)} |"
                    + (f" {unchecked} not run |" if unchecked else ""))
    if not rows:
        print("no mutants/ results here: run `mutmut run` first (docs/mutation.md)")
        return 1
    print("| module | mutants | killed | killed % | not killed | justified | unexplained |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    n, killed, left, justified, open_, _ = totals
    print(f"| all | {n} | {killed} | {100 * killed / max(n, 1):.1f}% | {left} | {justified} | {open_} |")
    if unexplained:
        print(f"\n{len(unexplained)} not killed and not explained in docs/mutation.md (mutmut show NAME):")
        print("\n".join(f"  {k}" for k in unexplained))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
