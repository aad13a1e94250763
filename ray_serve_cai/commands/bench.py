"""``ray-serve-cai bench``: run the benchmarks of ``loadtests/`` one after another, write one results file,
a markdown table and plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="run the benchmarks (each against its baseline) and write results, a table and plots",
        description="Run the registered benchmarks one after another (never two at once), each side by "
        "side with its baseline in alternating rounds, on 127.0.0.1. Each runs in a child process with a "
        "time budget; Ctrl-C or SIGTERM stops it and everything it started. Writes "
        "OUT/<date>-<commit>.json (every round, peak memory per process kind, the machine's facts), "
        "OUT/<date>-<commit>.md (printed at the end) and PNG plots next to them. Needs a source checkout "
        "(the benchmarks live in loadtests/); the LiteLLM rows need loadtests/setup_litellm_venv.sh. "
        "A full run takes hours on 2 cores: pick rows with --only, smoke-test with --tiny --rounds 1.",
        epilog="examples: ray-serve-cai bench --list;  ray-serve-cai bench --only p2 p3 --rounds 6;  "
        "ray-serve-cai bench --only p2 --rounds 1 --tiny;  ray-serve-cai bench --report loadtests/results/X.json;  "
        "ray-serve-cai bench --readme",
    )
    bench.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (see --list)")
    bench.add_argument("--rounds", type=int, default=6, help="alternating rounds per benchmark (default: 6)")
    bench.add_argument("--out", type=Path, default=None,
                       help="where results, table and plots go (default: loadtests/results; with --report, "
                       "the results file's folder)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument("--tiny", action="store_true",
                       help="short runs and small counts: checks that everything works, measures nothing")
    bench.add_argument("--haproxy", action="store_true",
                       help="reach Serve through its HAProxy ingress where a benchmark uses Serve's port (HAProxy "
                       "binds stats/metrics ports on all interfaces: run inside `unshare -n`)")
    bench.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                       help="stop each benchmark after this long (default: its own budget, scaled by --rounds)")
    bench.add_argument("--report", type=Path, default=None, metavar="RESULTS.json",
                       help="run nothing: re-render the table and plots of an existing results file")
    bench.add_argument("--readme", action="store_true",
                       help="run nothing: rewrite the headline tables of README.md and docs/benchmarks.md from the "
                       "latest run of each benchmark in loadtests/results")
    bench.set_defaults(func=_bench)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _finish(results, out_dir: Path) -> None:
    from ray_serve_cai.bench.report import markdown, write_markdown

    table = write_markdown(results, out_dir)
    try:
        from ray_serve_cai.bench.plots import render_all

        for png in render_all(results, out_dir):
            _log(f"[bench] plot: {png}")
    except ModuleNotFoundError as exc:
        _log(f"[bench] plots skipped ({exc.name} not installed: pip install 'ray-serve-cai[bench]')")
    _log(f"[bench] table: {table}")
    print(markdown(results))


def _bench(args: argparse.Namespace) -> int:
    from ray_serve_cai.bench.registry import BENCHMARKS, select
    from ray_serve_cai.cli import CLIError

    if args.list:
        for bench in BENCHMARKS.values():
            print(f"{bench.name:8} {bench.title}  [baseline: {bench.baseline}]")
        return 0
    if args.readme:
        from ray_serve_cai.bench.readme import update

        try:
            rewritten = update(ROOT)
        except OSError as exc:
            raise CLIError(f"--readme needs a source checkout: {exc.filename}: {exc.strerror}", 2) from None
        except ValueError as exc:
            raise CLIError(str(exc), 2) from None
        for path in rewritten:
            _log(f"[bench] rewrote {path}")
        return 0
    if args.report is not None:
        from pydantic import ValidationError

        from ray_serve_cai.bench.results import read_results
        from serve_apps.validation import format_validation_error

        try:
            results = read_results(args.report)
        except OSError as exc:
            raise CLIError(f"cannot read {args.report}: {exc.strerror}", 2) from None
        except ValidationError as exc:
            raise CLIError(f"{args.report} is not a bench results file: {format_validation_error(exc)}", 2) from None
        except ValueError as exc:
            raise CLIError(f"{args.report} is not JSON: {exc}", 2) from None
        _finish(results, args.out or args.report.parent)
        return 0
    if args.rounds < 1:
        raise CLIError("--rounds must be at least 1", 2)
    if args.budget is not None and args.budget <= 0:
        raise CLIError("--budget must be positive", 2)
    try:
        chosen = select(args.only)
    except KeyError as exc:
        raise CLIError(f"unknown benchmark(s): {exc.args[0]} (known: {', '.join(BENCHMARKS)})", 2) from None
    if not (ROOT / "loadtests").is_dir():
        raise CLIError("bench needs a source checkout: loadtests/ is not next to this package", 2)
    import signal

    from ray_serve_cai.bench.runner import Runner

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops like Ctrl-C: the running benchmark is cleaned up
    out = args.out or ROOT / "loadtests" / "results"
    runner = Runner(ROOT, out, args.rounds, tiny=args.tiny, haproxy=args.haproxy, budget_s=args.budget, log=_log)
    _log(f"[bench] {len(chosen)} benchmark(s): {', '.join(b.name for b in chosen)}; rounds {args.rounds}"
         f"{', tiny' if args.tiny else ''}; results in {out}")
    path = runner.run(chosen)
    _log(f"[bench] results: {path}")
    _finish(runner.results, out)
    failed = [r.name for r in runner.results.benchmarks if r.status != "ok"]
    if runner.interrupted:
        return 130
    if failed:
        _log(f"[bench] not ok: {', '.join(failed)}")
        return 1
    return 0
