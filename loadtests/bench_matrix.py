"""What does the Matrix bot path cost? ``!infer`` commands from several people in a room on a local
Synapse, answered by the MatrixInferenceBot through the router, against the same prompts sent
straight to the router over HTTP (streamed, read to ``[DONE]``).

One Ray cluster with the router app (one engine replica of the tiny model, ``kind: serve`` backend)
and its ``matrix:`` bot; one Synapse. Each round runs both paths (order alternating): ``--users``
people each send ``--commands / --users`` commands one after another (closed loop). Bot latency is
from sending the command to receiving the answer's final version (the edit marked done) on a /sync
long-poll; direct latency is from the request to ``data: [DONE]``. A third path measures the
homeserver alone: the same people send the same commands in a second room to an echo client that
replies at once, no inference (``EchoClient``). p50/p95 per round, medians over rounds, the bot path's
p50 overhead over the direct path, and what is left of it once the echo path's p50 (the homeserver's
floor) is taken off. Results: loadtests/results/<date>-<commit>-bench_matrix.json.

    .venv/bin/python -m loadtests.bench_matrix [--rounds 6] [--commands 50] [--users 5] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from launchers.local import LocalCluster, free_port
from launchers.polling import poll_until
from loadtests.matrix_people import Person
from loadtests.matrix_synapse import SERVER_NAME, Synapse
from loadtests.output import write_result
from loadtests.paths import ROOT
from loadtests.processes import stop_on_sigterm
from loadtests.servers import wait_http
from serve_apps.matrix.replies import DONE_KEY

MODEL = "tiny-chat"


class Syncer(threading.Thread):
    """Long-polls /sync as ``person`` and hands every timeline event of its joined rooms to ``seen``."""

    def __init__(self, person: Person) -> None:
        super().__init__(daemon=True)
        self.person = person
        self.stopping = False
        self.since = person.sync(None, 0)["next_batch"]

    def run(self) -> None:
        while not self.stopping:
            batch = self.person.sync(self.since, 5000)
            now = time.perf_counter()
            self.since = batch["next_batch"]
            for room_id, room in batch.get("rooms", {}).get("join", {}).items():
                for event in room.get("timeline", {}).get("events", []):
                    self._seen(room_id, event, now)

    def _seen(self, room_id: str, event: dict[str, Any], now: float) -> None:
        raise NotImplementedError


class EchoClient(Syncer):
    """The homeserver's floor under the bot path: a plain client that answers every ``!infer`` in the
    rooms it is in at once, with one reply shaped like the bot's final answer, and no inference. Its
    latency is what the homeserver alone costs: the command's send, its delivery, the reply's send
    and the reply's delivery to the person -- the same four steps the bot path takes."""

    def _seen(self, room_id: str, event: dict[str, Any], now: float) -> None:
        body = event.get("content", {}).get("body", "")
        if event.get("sender") != self.person.user_id and body.startswith("!infer"):
            content = {"msgtype": "m.notice", "body": "[echo] " + body[len("!infer"):].strip(), DONE_KEY: True,
                       "m.relates_to": {"m.in_reply_to": {"event_id": event["event_id"]}}}
            threading.Thread(target=self.person.send_content, args=(room_id, content), daemon=True).start()


class Observer(Syncer):
    """Long-polls /sync as one room member and records when each command's final answer from one of
    ``bots`` arrives (one observer for every room: a second would double the homeserver's sync work)."""

    def __init__(self, person: Person, bots: set[str]) -> None:
        super().__init__(person)
        self.bots = bots
        self.reply_of: dict[str, str] = {}  # reply event -> command event
        self.final_at: dict[str, float] = {}
        self.changed = threading.Condition()

    def _seen(self, room_id: str, event: dict[str, Any], now: float) -> None:
        if event.get("sender") not in self.bots or event.get("type") != "m.room.message":
            return
        content = event["content"]
        relates = content.get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace":
            command, final = self.reply_of.get(relates["event_id"]), content.get("m.new_content", {}).get(DONE_KEY)
        else:
            command = (relates.get("m.in_reply_to") or {}).get("event_id")
            if command:
                self.reply_of[event["event_id"]] = command
            final = content.get(DONE_KEY)
        if command and final:
            with self.changed:
                self.final_at.setdefault(command, now)
                self.changed.notify_all()

    def wait_final(self, command: str, timeout: float = 120) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: command in self.final_at, timeout):
                raise TimeoutError(f"no final answer to {command}")
            return self.final_at[command]


def prompts(count: int) -> list[str]:
    return [f"Question {i}: tell me about replica number {i}" for i in range(count)]


def run_people(people: list[Person], per_person: int, work) -> list[float]:
    """``work(person, prompt) -> latency`` for every person in parallel, each one prompt after another."""
    latencies: list[float] = []
    lock = threading.Lock()
    texts = prompts(per_person * len(people))

    def one(index: int, person: Person) -> None:
        for prompt in texts[index::len(people)]:
            latency = work(person, prompt)
            with lock:
                latencies.append(latency)

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(people)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "p50_ms": statistics.median(ordered) * 1000,
            "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--commands", type=int, default=50, help="commands per path per round")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs (engine busy-poll)")
    parser.add_argument("--name", default="bench_matrix", help="results file: loadtests/results/<date>-<commit>-NAME.json")
    parser.add_argument("--profile", action="store_true",
                        help="unbuffered Serve logs, and the bot's per-step timings (from its log) in the results")
    parser.add_argument("--synapse-dir", type=Path, default=None, metavar="DIR",
                        help="where Synapse keeps its sqlite database (default: a temporary folder under $TMPDIR); "
                             "/dev/shm shows how much of the bot path is the homeserver's disk writes")
    args = parser.parse_args()
    if args.commands % args.users:
        parser.error("--commands must be a multiple of --users")
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-matrix-"))
    synapse = Synapse(Path(tempfile.mkdtemp(prefix="synapse-", dir=args.synapse_dir)) if args.synapse_dir
                      else workdir / "synapse").start()
    cluster = LocalCluster(extra_env={"PYTHONPATH": str(ROOT)}, log_path=workdir / "ray.log")
    rounds: list[dict[str, Any]] = []
    syncers: list[Syncer] = []
    try:
        print(f"synapse up on {synapse.url}; starting Ray and the router app (the engine takes ~1-2 min)", flush=True)
        bot_account = synapse.register("bot")
        echo_account = synapse.register("echo")
        people = [Person(synapse.url, a["user_id"], a["access_token"])
                  for a in (synapse.register(f"user{i}") for i in range(args.users))]
        token_file = workdir / "bot-token"
        token_file.write_text(bot_account["access_token"])
        cluster.start()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        defaults = {"ignore_eos": True, "temperature": 0}
        matrix = {"homeserver": synapse.url, "user_id": bot_account["user_id"], "access_token": {"file": str(token_file)},
                  "store_path": str(workdir / "bot-store"), "allow": {"users": ["*:" + SERVER_NAME]},
                  "rate_limit": {"requests": 10000, "per_seconds": 60}, "max_tokens": args.max_tokens,
                  "request_defaults": defaults}
        env_vars = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
        if args.profile:  # the fast path buffers logs 1000 lines deep; the bot's step timings must reach the file
            env_vars["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] = "1"
        config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
            {"name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app",
             "runtime_env": {"env_vars": env_vars}, "args": {
                 "engines": [{"name": MODEL, "model": "builtin:tiny-chat", "kv_cache_gb": 1}],
                 "backends": [{"name": "engine", "kind": "serve", "engine": MODEL}], "matrix": matrix}}]}
        (workdir / "serve.yaml").write_text(yaml.safe_dump(config))
        cluster.deploy(workdir / "serve.yaml")
        wait_http(base + "/health", 900)
        body = {**defaults, "model": MODEL, "max_tokens": args.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
        poll_until(lambda: generates(base, body), 900, 2)  # the router is up before its engine
        owner = people[0]
        room = owner.create_room([bot_account["user_id"]] + [p.user_id for p in people[1:]])
        for person in people[1:]:
            person.join(room)
        owner.wait_joined(room, bot_account["user_id"], timeout=120)
        # The same people in a second room, with the echo client instead of the bot
        echo = Person(synapse.url, echo_account["user_id"], echo_account["access_token"])
        echo_room = owner.create_room([echo.user_id] + [p.user_id for p in people[1:]])
        for person in [echo, *people[1:]]:
            person.join(echo_room)
        observer = Observer(owner, {bot_account["user_id"], echo.user_id})
        for syncer in (observer, EchoClient(echo)):
            syncers.append(syncer)
            syncer.start()

        def via_bot(person: Person, prompt: str) -> float:
            started = time.perf_counter()
            command = person.send(room, f"!infer {prompt}")
            return observer.wait_final(command) - started

        def via_echo(person: Person, prompt: str) -> float:
            started = time.perf_counter()
            command = person.send(echo_room, f"!infer {prompt}")
            return observer.wait_final(command) - started

        def direct(person: Person, prompt: str) -> float:
            return direct_once(base, body, prompt)

        via_bot(owner, "warm up the bot")
        via_echo(owner, "warm up the echo client")
        per_person = args.commands // args.users
        paths = [("bot", via_bot), ("direct", direct), ("echo", via_echo)]
        for index in range(args.rounds):
            order = paths[index % 3:] + paths[:index % 3]  # each path first, middle and last in turn
            result: dict[str, Any] = {"round": index}
            for name, work in order:
                time.sleep(args.pause)
                latencies = run_people(people, per_person, work)
                result[name] = {**summary(latencies), "latencies_ms": [round(x * 1000, 2) for x in latencies]}
                print(f"round {index} {name:6} p50 {result[name]['p50_ms']:7.1f} ms  p95 {result[name]['p95_ms']:7.1f} ms",
                      flush=True)
            result["overhead_p50_ms"] = result["bot"]["p50_ms"] - result["direct"]["p50_ms"]
            # what the bot adds beyond the homeserver's own four steps (the echo path) and the inference
            result["beyond_homeserver_p50_ms"] = result["overhead_p50_ms"] - result["echo"]["p50_ms"]
            rounds.append(result)
        steps = bot_steps(Path(cluster.temp_dir)) if args.profile else {}
    finally:
        for syncer in syncers:
            syncer.stopping = True
        cluster.stop()
        synapse.stop()
    medians = {
        "bot_p50_ms": statistics.median(r["bot"]["p50_ms"] for r in rounds),
        "bot_p95_ms": statistics.median(r["bot"]["p95_ms"] for r in rounds),
        "direct_p50_ms": statistics.median(r["direct"]["p50_ms"] for r in rounds),
        "direct_p95_ms": statistics.median(r["direct"]["p95_ms"] for r in rounds),
        "overhead_p50_ms": statistics.median(r["overhead_p50_ms"] for r in rounds),
        "echo_p50_ms": statistics.median(r["echo"]["p50_ms"] for r in rounds),
        "echo_p95_ms": statistics.median(r["echo"]["p95_ms"] for r in rounds),
        "beyond_homeserver_p50_ms": statistics.median(r["beyond_homeserver_p50_ms"] for r in rounds),
    }
    for key, value in medians.items():
        print(f"{key}: {value:.1f}")
    if steps:
        print("bot steps, median ms after the command reached the bot:", json.dumps(steps))
    path = write_result(args.name, {"summary": medians, "bot_steps_ms": steps, "rounds": rounds, "commands": args.commands, "users": args.users,
                                    "max_tokens": args.max_tokens, "synapse_dir": str(args.synapse_dir or "$TMPDIR"), "load_avg": open("/proc/loadavg").read().split()[:3],
                                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"wrote {path}")


def bot_steps(ray_temp_dir: Path) -> dict[str, float]:
    """Medians of the step timings the bot logs with every answer ("ms: delivered 12 head 30 ...")."""
    found: dict[str, list[float]] = {}
    for log in ray_temp_dir.glob("session_latest/logs/serve/replica_*MatrixInferenceBot*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "answered by" not in line or "ms: " not in line:
                continue
            words = line.split("ms: ", 1)[1].rstrip(")").split()
            for name, value in zip(words[::2], words[1::2], strict=False):
                found.setdefault(name, []).append(float(value.rstrip(")")))
            sends = line.split(" sends;")[0].rsplit(" ", 1)[-1]
            found.setdefault("sends", []).append(float(sends))
    return {name: statistics.median(values) for name, values in found.items()}


def generates(base: str, body: dict[str, Any]) -> bool:
    try:
        direct_once(base, body, "warm up")
        return True
    except urllib.error.URLError:  # HTTPError (503 while the engine loads) included
        return False


def direct_once(base: str, body: dict[str, Any], prompt: str) -> float:
    payload = {**body, "messages": [{"role": "user", "content": prompt}]}
    request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(payload).encode(),
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        data = response.read()
    if not data.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"direct request did not finish: {data[-200:]!r}")
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
