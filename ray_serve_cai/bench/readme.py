"""The headline-numbers tables of README.md and docs/benchmarks.md, rendered from the results files.

Numbers in those tables are never typed by hand: each row comes from the latest run of its benchmark in
``loadtests/results/<date>-<commit>.json`` (files the ``ray-serve-cai bench`` harness writes; other JSON
files there are not read). The README shows the headlines that have a target; docs/benchmarks.md shows
them all. Each table sits between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``.

    python -m ray_serve_cai.bench.readme            # rewrite both blocks (also: ray-serve-cai bench --readme)
    python -m ray_serve_cai.bench.readme --check    # exit 1 if a block differs from the results files
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ray_serve_cai.bench.registry import BENCHMARKS
from ray_serve_cai.bench.report import OK_MARK, _number
from ray_serve_cai.bench.results import BenchmarkRecord, BenchResults, read_results

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path("loadtests/results")
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
HARNESS_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}-[0-9a-f]{7,40}\.json$")


@dataclass(frozen=True)
class Table:
    """Where a table goes (relative to the repo root) and which headlines it shows."""

    path: Path
    targets_only: bool


TABLES = (Table(Path("README.md"), targets_only=True), Table(Path("docs/benchmarks.md"), targets_only=False))


@dataclass(frozen=True)
class Latest:
    """The newest finished, full-size run of one benchmark, and the results file it is in."""

    record: BenchmarkRecord
    results: BenchResults
    path: Path  # relative to the repo root


def latest_runs(root: Path = ROOT) -> list[Latest]:
    """The latest ``ok``, non-tiny run per benchmark name across the harness files, in registry order."""
    newest: dict[str, Latest] = {}
    for path in sorted((root / RESULTS_DIR).glob("*.json")):
        if not HARNESS_FILE.match(path.name):
            continue
        results = read_results(path)
        for record in results.benchmarks:
            if record.status != "ok" or record.output is None or record.settings.tiny:
                continue
            seen = newest.get(record.name)
            if seen is None or record.started > seen.record.started:
                newest[record.name] = Latest(record, results, path.relative_to(root))
    order = list(BENCHMARKS)
    return sorted(newest.values(), key=lambda x: (order.index(x.record.name) if x.record.name in order
                                                  else len(order), x.record.name))


def _machine(results: BenchResults) -> str:
    m = results.machine
    flags = f" ({' '.join(m.cpu_flags)})" if m.cpu_flags else ""
    return f"{m.cores} cores {m.cpu_model}{flags}, {m.memory_gib:g} GiB, {m.gpu or 'no GPU'}"


def render(runs: list[Latest], table: Table) -> str:
    """The markdown table, links relative to ``table.path``; the lines between the markers."""
    up = "../" * (len(table.path.parts) - 1)
    lines = ["| benchmark | metric | value | target | met | date | commit | machine |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        results, report = run.results, run.path.with_suffix(".md")
        commit = f"[{results.commit}]({up}{report.as_posix()}){' (dirty)' if results.dirty else ''}"
        assert run.record.output is not None  # latest_runs keeps only runs with output
        for h in run.record.output.headlines:
            if table.targets_only and h.target is None:
                continue
            unit = f" {h.unit}" if h.unit else ""
            lines.append(f"| {run.record.name} | {h.metric} | {_number(h.value)}{unit} | {h.target or ''} | "
                         f"{OK_MARK[h.ok]} | {run.record.started:%Y-%m-%d} | {commit} | {_machine(results)} |")
    return "\n".join(lines)


def replace_block(text: str, block: str, name: str = "text") -> str:
    """``text`` with the lines between the markers replaced by ``block``; ``ValueError`` without markers."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{name} has no {START} ... {END} block")
    return f"{text[:start + len(START)]}\n{block}\n{text[end:]}"


def update(root: Path = ROOT, *, check: bool = False) -> list[Path]:
    """Rewrite each table's block (or with ``check``, only compare); returns the files that differed."""
    runs = latest_runs(root)
    differing = []
    for table in TABLES:
        path = root / table.path
        text = path.read_text()
        new = replace_block(text, render(runs, table), str(table.path))
        if new != text:
            differing.append(table.path)
            if not check:
                path.write_text(new)
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_serve_cai.bench.readme",
                                     description="Rewrite the headline tables of README.md and docs/benchmarks.md "
                                     "from the latest run of each benchmark in loadtests/results.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    args = parser.parse_args(argv)
    differing = update(check=args.check)
    for path in differing:
        print(f"{'out of date' if args.check else 'rewrote'}: {path}", file=sys.stderr)
    return 1 if args.check and differing else 0


if __name__ == "__main__":
    sys.exit(main())
