"""The markdown report of a results file: the headline numbers against their targets, and P6 (peak
memory per kind of process) for every benchmark."""

from __future__ import annotations

from pathlib import Path

from ray_serve_cai.bench.results import BenchResults

OK_MARK = {True: "yes", False: "**no**", None: ""}
# P6 budgets (MiB) per kind of process; the other kinds are reported without one
MEMORY_BUDGET_MIB = {"router replica": 300}


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def machine_line(results: BenchResults) -> str:
    m = results.machine
    gpu = m.gpu or "no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items() if v)
    dirty = " (uncommitted changes)" if results.dirty else ""
    flags = f" ({' '.join(m.cpu_flags)})" if m.cpu_flags else ""
    return (f"{results.started:%Y-%m-%d %H:%M} UTC, commit {results.commit}{dirty}; {m.cores} cores "
            f"{m.cpu_model}{flags}, {m.memory_gib:g} GiB, {gpu}; load average at start {m.load_avg[0]:g}; {versions}")


def markdown(results: BenchResults) -> str:
    lines = [f"# Benchmarks {results.stem()}", "", machine_line(results), "",
             "| benchmark | rounds | metric | value | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for record in results.benchmarks:
        rounds = f"{record.settings.rounds}{' (tiny)' if record.settings.tiny else ''}"
        if record.status != "ok" or record.output is None:
            lines.append(f"| {record.name} | {rounds} | {record.status} | {record.error or ''} | | |")
            continue
        for headline in record.output.headlines:
            unit = f" {headline.unit}" if headline.unit else ""
            lines.append(f"| {record.name} | {rounds} | {headline.metric} | {_number(headline.value)}{unit} | "
                         f"{headline.target or ''} | {OK_MARK[headline.ok]} |")
    lines += ["", "Peak RSS per kind of process (P6, MiB): all of a kind summed per sample, and the largest one "
              "(a process with its engine subprocesses); the target applies to the largest one.", "",
              "| benchmark | process | peak RSS, all | processes | largest one | target | met |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for record in results.benchmarks:
        for peak in record.memory:
            budget = MEMORY_BUDGET_MIB.get(peak.process)
            check = f"<= {budget} | {OK_MARK[peak.largest_mib <= budget]}" if budget else " | "
            lines.append(f"| {record.name} | {peak.process} | {peak.peak_rss_mib:.0f} | {peak.processes} | "
                         f"{peak.largest_mib:.0f} | {check} |")
    return "\n".join(lines) + "\n"


def write_markdown(results: BenchResults, out_dir: Path) -> Path:
    path = out_dir / f"{results.stem()}.md"
    path.write_text(markdown(results))
    return path
