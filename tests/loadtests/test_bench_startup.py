"""The start-up benchmark's log reading, on lines copied from real runs (7 Dec, vLLM 0.32, Ray 2.60)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from loadtests.bench_startup import STOCK_EVENTS, VLLM_EVENTS, attribution, up_events, vllm_events

STARTED = datetime(2026, 12, 7, 12, 58, 39).timestamp()
VLLM_LOG = """\
(EngineCore pid=14000) INFO 12-07 13:00:00 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/m'
(EngineCore pid=14000) INFO 12-07 13:00:00 [ompmultiprocessing.py:185] OpenMP thread binding info:
(VllmWorker-0 pid=14243) WARNING 12-07 13:00:21 [vllm.py:725] Model Runner V2 requires Triton; using V1
(Worker pid=14243) INFO 12-07 13:00:22 [cpu_model_runner.py:68] Starting to load model /m...
(EngineCore pid=14000) INFO 12-07 13:00:26 [core.py:402] init engine (profile, create kv cache, warmup model) took 3.56 s
"""


def test_vllm_events_are_seconds_since_the_start():
    assert vllm_events(VLLM_LOG, STARTED) == {"vllm_engine_core_s": 81.0, "vllm_worker_s": 102.0,
                                              "vllm_engine_ready_s": 107.0}
    stock = "(APIServer pid=1) INFO 12-07 12:58:50 [api_utils.py:347] \n" + VLLM_LOG
    assert vllm_events(stock, STARTED, STOCK_EVENTS + VLLM_EVENTS)["vllm_api_server_s"] == 11.0


def test_up_events_read_serve_and_worker_logs(tmp_path: Path):
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "controller_13317.log").write_text(
        "INFO 2026-12-07 12:59:04,857 controller 13317 -- Controller starting (version='2.60.0').\n"
        "INFO 2026-12-07 12:59:10,407 controller 13317 -- Imported and built app 'router' successfully.\n")
    (tmp_path / "serve" / "replica_router_engine-tiny-chat_wn692k17.log").write_text(
        "INFO 2026-12-07 12:59:18,142 router_engine-tiny-chat wn692k17 -- Started initializing replica.\n")
    (tmp_path / "serve" / "replica_router_MultiBackendRouter_d7.log").write_text(
        "INFO 2026-12-07 12:59:17,000 router_MultiBackendRouter d7 -- Started initializing replica.\n")
    (tmp_path / "worker-f2-01000000-13574.out").write_text(VLLM_LOG)
    events = up_events(tmp_path, STARTED)
    assert events == {"serve_controller_s": 25.9, "app_built_s": 31.4, "engine_replica_s": 39.1,
                      "vllm_engine_core_s": 81.0, "vllm_worker_s": 102.0, "vllm_engine_ready_s": 107.0}
    side = {"ready_s": 113.6, **events}
    assert attribution(side, "engine_replica_s") == {"before_vllm_s": 39.1, "vllm_s": 67.9, "after_vllm_s": 6.6}
    assert attribution({"ready_s": 1.0}, "engine_replica_s") == {}  # no vLLM lines: nothing to attribute
    stock = {"ready_s": 86.2, "vllm_api_server_s": 23.4, "vllm_engine_ready_s": 83.4}
    assert attribution(stock, None) == {"before_vllm_s": 0.0, "vllm_s": 83.4, "after_vllm_s": 2.8}
