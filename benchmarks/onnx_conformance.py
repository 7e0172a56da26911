"""ONNX node-test conformance per operator: ``python benchmarks/onnx_conformance.py [--target T]``.

Prints, for every operator kiln claims, the cases passed (directly, and with shape-setting inputs
bound as constants), skipped (with reasons) and failed, then the totals and the unclaimed
operators of the suite.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from kiln.frontends.onnx_conformance import (
    claimed_operators,
    node_cases,
    operator_of,
    run_conformance,
    summarize,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="reference")
    ap.add_argument("--failures", action="store_true", help="print every failure and skip reason")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = run_conformance(target=args.target)
    elapsed = time.perf_counter() - t0
    table = summarize(results)
    print(f"{'operator':<30} {'passed':>7} {'static':>7} {'skipped':>8} {'failed':>7} {'total':>6}")
    total: Counter[str] = Counter()
    for op in sorted(table):
        c = table[op]
        total.update(c)
        n = sum(c.values())
        print(f"{op:<30} {c['pass']:>7} {c['pass-static']:>7} {c['skip']:>8} {c['fail']:>7} {n:>6}")
    n = sum(total.values())
    print(
        f"{'TOTAL':<30} {total['pass']:>7} {total['pass-static']:>7} {total['skip']:>8} {total['fail']:>7} {n:>6}"
    )
    print(f"\n{len(table)} operators claimed and tested on '{args.target}' in {elapsed:.1f} s")
    reasons = Counter(r.detail for r in results if r.status == "skip")
    print("skip reasons: " + "; ".join(f"{why} ({k})" for why, k in reasons.most_common()))
    unclaimed = sorted(set(operator_of(node_cases()).values()) - claimed_operators())
    print(f"operators in the suite kiln does not claim ({len(unclaimed)}): {', '.join(unclaimed)}")
    if args.failures:
        for r in results:
            if r.status in ("fail", "skip"):
                print(f"{r.status:>5} {r.op:<20} {r.name}: {r.detail}")


if __name__ == "__main__":
    main()
