"""A standalone benchmark run names its results file as the harness does (``<date>-<commit>``), with the
benchmark's name after it, so ``bench --readme`` (which reads only harness files) never mistakes it for one."""

from __future__ import annotations

import re

from loadtests.output import result_path
from loadtests.paths import RESULTS
from ray_serve_cai.bench.readme import HARNESS_FILE


def test_a_standalone_result_is_named_date_commit_name():
    path = result_path("bench_engine")
    assert path.parent == RESULTS
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[0-9a-z]+-bench_engine\.json", path.name), path.name
    assert not HARNESS_FILE.match(path.name)


def test_an_absolute_name_stays_where_it_points(tmp_path):
    """``bench_scripts`` passes a scratch folder's path and reads the JSON back from there."""
    assert result_path(str(tmp_path / "batch")) == tmp_path / "batch.json"
