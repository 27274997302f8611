"""Ratio tables from pytest-benchmark JSON: for each group, the fast path against every other path of the same run.

    python benchmarks/summarize.py results.json [--fast extension]

A ratio is (other path's median time) / (fast path's median time): above 1 means the fast path is faster.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def summarize(path: str, fast: str) -> str:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["extra_info"]["path"]] = bench["stats"]["median"]
    others = sorted({p for g in groups.values() for p in g} - {fast})
    lines = [
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, {data['datetime']}",
        "",
        f"| group | {fast} ms | " + " | ".join(f"{o} ms | {o}/{fast}" for o in others) + " |",
        "|---|---:|" + "---:|---:|" * len(others),
    ]
    for name, paths in groups.items():
        if fast not in paths:
            continue
        t = paths[fast]
        cells = []
        for o in others:
            cells += [f"{paths[o] * 1e3:.2f}", f"{paths[o] / t:.2f}x"] if o in paths else ["-", "-"]
        lines.append(f"| {name} | {t * 1e3:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="a file written by pytest --benchmark-json")
    parser.add_argument("--fast", default="extension", help="the path the others are compared with")
    args = parser.parse_args()
    print(summarize(args.json, args.fast))


if __name__ == "__main__":
    main()
