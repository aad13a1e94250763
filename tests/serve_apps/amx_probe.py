"""A vLLM worker extension (``worker_extension_cls``) that reports, from inside the worker process,
which extended CPU features that process may use. ``LLM.collective_rpc("xcomp_permissions")`` calls it."""

from __future__ import annotations

import os

from serve_apps.vllm_plugin import permitted_xfeatures


class AmxProbe:
    def xcomp_permissions(self) -> tuple[int, int | None]:
        return os.getpid(), permitted_xfeatures()
