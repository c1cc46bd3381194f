"""Does `stempress recommend` on a sample agree with the full benchmark? Both, side by side, in one run.

    python benchmarks/recommend_vs_full.py                    # paper-like suite, balanced chunking
    python benchmarks/recommend_vs_full.py --suite smoke --sample-fraction 0.5

For each cube of the suite: benchmark the whole cube (the study's methods, balanced chunking, --runs runs) and
rank every use case; benchmark a spread sample (--sample-fraction of the scan rows) as `stempress recommend`
does; print both choices and where the sample's choice stands in the full ranking.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from stempress.bench.ranking import USE_CASES, compress_writes, recommend
from stempress.bench.recommend import recommend_source
from stempress.bench.runner import BenchConfig, run_grid
from stempress.bench.statistics import statistics
from stempress.codecs.catalog import select_codecs
from stempress.data.base import nbytes
from stempress.data.suites import suite


def full_ranking(stats: pd.DataFrame, use_case: str) -> list[str]:
    """Methods in the full benchmark's order for a use case: its choice, then the next ones, then the rest."""
    ranked: list[str] = []
    remaining = stats
    while not remaining.empty and len(ranked) < 5:
        choice = recommend(remaining, use_case).method
        ranked.append(choice)
        remaining = remaining[remaining["method"] != choice]
    return ranked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="paper-like")
    parser.add_argument("--methods", default="paper")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample-fraction", type=float, default=0.25)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="stempress-recommend-vs-full-") as scratch:
        for cube in suite(args.suite):
            codecs = [c for c in select_codecs(args.methods) if compress_writes(c.name)]  # what recommend ranks
            config = BenchConfig(codecs=codecs, chunkings=["balanced"], runs=args.runs,
                                 workdir=Path(scratch), time_limit_s=120.0)
            full = statistics(pd.DataFrame(run_grid([cube], config)))
            for use_case in USE_CASES:
                ranking = full_ranking(full, use_case)
                sample_choice, _ = recommend_source(
                    cube, use_case, methods=args.methods, runs=args.runs, workdir=Path(scratch),
                    max_sample_bytes=int(args.sample_fraction * nbytes(cube)), time_limit_s=120.0)
                place = ranking.index(sample_choice.method) + 1 if sample_choice.method in ranking else None
                rows.append({"dataset": cube.name, "use_case": use_case, "full": ranking[0],
                             "sample": sample_choice.method, "sample's place in full ranking": place or ">5"})
                print(f"{cube.name:20s} {use_case:11s} full {ranking[0]:24s} sample {sample_choice.method:24s} "
                      f"place {place or '>5'}", flush=True)
    table = pd.DataFrame(rows)
    agree = (table["full"] == table["sample"]).mean()
    top3 = table["sample's place in full ranking"].map(lambda p: isinstance(p, int) and p <= 3).mean()
    print(f"\nsample choice == full choice in {agree:.0%} of {len(table)} cases; within the full top 3 in {top3:.0%}")
    by_case = table.assign(agree=table["full"] == table["sample"]).groupby("use_case")["agree"].mean()
    print("agreement by use case: " + ", ".join(f"{k} {v:.0%}" for k, v in by_case.items()))


if __name__ == "__main__":
    main()
