"""Pydantic models for the arguments of every Serve app this package builds.

Why pydantic here: a serve config YAML is user input; a typo must fail at load with the key's path,
not deep inside an engine. Every model forbids unknown keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from serve_apps.validation import StrictModel

BUILTIN_PREFIX = "builtin:"
CPU_NATIVE_DTYPE = "cpu-native"


class AutoscalingConfig(StrictModel):
    """Serve autoscaling for engine replicas (maps to Serve's ``autoscaling_config``)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(32, gt=0)
    upscale_delay_s: float = Field(30, ge=0)
    downscale_delay_s: float = Field(300, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class EngineConfig(StrictModel):
    """One served model: which engine runs it, on what, and how many replicas."""

    name: str = Field("tiny-chat", min_length=1, description="served model name (the API's `model`)")
    model: str = Field(
        "builtin:tiny-chat",
        description="local model directory, a hub id where a hub is reachable, or builtin:NAME "
        "(tiny-chat, smollm2-135m-instruct)",
    )
    engine: str = Field("vllm", description="engine registry name (see `get_registry().names()`)")
    aliases: list[str] = Field(default_factory=list, description="extra names the model answers to")
    device: Literal["cpu", "gpu"] = "cpu"
    dtype: str = Field("auto", description="the engine's dtype (auto: the model's own), or cpu-native: "
                       "bfloat16 on CPUs that compute it natively (AVX512_BF16, AMX), float32 elsewhere")
    max_model_len: int | None = Field(None, gt=0)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = Field(True, description="skip graph capture: faster start, fine on CPU")
    kv_cache_gb: float = Field(1.0, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(
        256, ge=1, description="per replica; Serve's default of 5 throttles streaming badly"
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0, description="bodies above this get 413")
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved per replica")
    access_log: bool = Field(False, description="Serve's per-request access log (costs CPU per request)")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="passed through to the engine (e.g. vLLM engine args)"
    )

    @property
    def served_names(self) -> list[str]:
        return [self.name, *self.aliases]

    def engine_dtype(self) -> str:
        """The dtype to ask the engine for, with ``cpu-native`` resolved on this machine's CPU."""
        if self.dtype != CPU_NATIVE_DTYPE:
            return self.dtype
        if self.device != "cpu":
            return "auto"
        from serve_apps.cpu_features import cpu_native_dtype

        return cpu_native_dtype()

    def resolve_model_path(self) -> str:
        """The path or id the engine loads; builds a ``builtin:NAME`` model on first use."""
        if self.model.startswith(BUILTIN_PREFIX):
            from serve_apps.models import ensure_builtin_model

            return str(ensure_builtin_model(self.model[len(BUILTIN_PREFIX):]))
        expanded = Path(self.model).expanduser()
        return str(expanded) if expanded.exists() else self.model

