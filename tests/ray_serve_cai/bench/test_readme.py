"""README.md fits one screen, its headline numbers come from the committed results files, and the relative
links of the README and docs/ lead to files and headings that exist."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from ray_serve_cai.bench.readme import END, ROOT, START, TABLES, latest_runs, render, replace_block, update
from ray_serve_cai.bench.results import (
    BenchmarkRecord,
    BenchOutput,
    BenchResults,
    BenchSettings,
    Machine,
    headline,
    write_results,
)

DOCS = [ROOT / "README.md", ROOT / "loadtests" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_fits_one_screen() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 130, f"README.md has {len(lines)} lines; move details into docs/"


def test_tables_match_the_committed_results() -> None:
    assert update(ROOT, check=True) == [], "out of date: run `ray-serve-cai bench --readme` and commit the result"


def run(commit: str, started: dt.datetime, *records: BenchmarkRecord, dirty: bool = False) -> BenchResults:
    machine = Machine(cores=2, memory_gib=23.5, cpu_model="AMD EPYC", gpu=None, platform="Linux", load_avg=[0.1],
                      versions={"vllm": "0.32.0"})
    return BenchResults(started=started, commit=commit, dirty=dirty, machine=machine, command=["bench"],
                        benchmarks=list(records))


def record(name: str, started: dt.datetime, value: float, *, status: str = "ok",
           tiny: bool = False) -> BenchmarkRecord:
    output = BenchOutput(rows=[], headlines=[headline("added latency", value, "ms", at_most=2),
                                             headline("router CPU", 0.3, "ms")])
    return BenchmarkRecord(name=name, title=name, baseline="direct", status=status, started=started, seconds=1.0,
                           settings=BenchSettings(rounds=6, workdir=Path("/tmp/x"), tiny=tiny), output=output)


def test_latest_full_run_per_benchmark_rendered_with_links(tmp_path: Path) -> None:
    day1 = dt.datetime(2026, 11, 29, 9, tzinfo=dt.UTC)
    day2 = day1 + dt.timedelta(days=1)
    results = tmp_path / "loadtests" / "results"
    write_results(run("aaaaaaa", day1, record("p2", day1, 0.5), record("p3", day1, 0.2)), results)
    # newer, but tiny or failed: not headline numbers
    write_results(run("bbbbbbb", day2, record("p2", day2, 9.0, tiny=True), record("p3", day2, 9.0, status="failed")),
                  results)
    write_results(run("ccccccc", day2, record("p2", day2 + dt.timedelta(hours=1), 1.5), dirty=True), results)
    (results / "bench_old.json").write_text("{}")  # not a harness file: never read
    runs = latest_runs(tmp_path)
    assert [(r.record.name, r.results.commit) for r in runs] == [("p2", "ccccccc"), ("p3", "aaaaaaa")]

    readme, docs = render(runs, TABLES[0]), render(runs, TABLES[1])
    assert "| p2 | added latency | 1.5 ms | <= 2 | yes | 2026-11-30 | " \
           "[ccccccc](loadtests/results/2026-11-30-ccccccc.md) (dirty) | 2 cores AMD EPYC, 23.5 GiB, no GPU |" in readme
    assert "router CPU" not in readme  # the README keeps the rows with a target
    assert ("| p3 | router CPU | 0.3 ms |  |  | 2026-11-29 | "
            "[aaaaaaa](../loadtests/results/2026-11-29-aaaaaaa.md) |") in docs

    for table in TABLES:
        (tmp_path / table.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / table.path).write_text(f"# title\n\n{START}\nold\n{END}\n\nafter\n")
    assert update(tmp_path, check=True) == [t.path for t in TABLES]
    assert update(tmp_path) == [t.path for t in TABLES]
    assert update(tmp_path, check=True) == []
    text = (tmp_path / "README.md").read_text()
    assert text == f"# title\n\n{START}\n{readme}\n{END}\n\nafter\n"


def test_replace_block_needs_both_markers() -> None:
    with pytest.raises(ValueError, match="no <!-- bench-table:start -->"):
        replace_block(f"{END}\n{START}\n", "x", "README.md")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            base = slug(m.group(1))
            found.add(f"{base}-{counts[base]}" if base in counts else base)
            counts[base] = counts.get(base, 0) + 1
    return found


def links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in links(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)
