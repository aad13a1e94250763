"""Pure parts of ``loadtests/bench_batch.py``: the P4 input file is one the batch API accepts, and its
clients send exactly the bodies the file holds. (The benchmark itself is run by hand or by
``ray-serve-cai bench``; benchmarks are not tests.)"""

from __future__ import annotations

import io
import json

from loadtests.bench_batch import batch_lines, completion_body, prompts
from serve_apps.batch.lines import scan


def test_the_p4_file_is_a_valid_completions_batch_with_one_line_per_prompt():
    texts = prompts(50)
    data = batch_lines(texts, 32).encode()
    result = scan(io.BytesIO(data), "/v1/completions", max_line_bytes=1024 * 1024, max_requests=50_000)
    assert (result.total, result.errors) == (50, [])
    lines = [json.loads(line) for line in data.splitlines()]
    assert [line["body"] for line in lines] == [completion_body(text, 32) for text in texts]
    assert len({line["custom_id"] for line in lines}) == 50
