"""Prefix affinity: send requests whose prompts share a prefix to the endpoint that already served it,
so the engine finds that prefix in its KV cache.

Approximate, like llm-d's prefix-cache scorer: no tokenizer. The prompt (chat messages rendered in
order as role + content, or the completion prompt) is UTF-8 encoded and cut into fixed-size blocks;
block ``i``'s key is the running CRC-32 of the prompt up to the end of block ``i`` (``zlib.crc32``
chains natively) tagged with ``i``, so a key stands for the whole prefix before it. An LRU index maps
key -> bitmask of the endpoints that were sent that prefix. A request goes to the endpoint holding the
longest chain of its keys (the least loaded of those, if several), unless that endpoint's outstanding
count exceeds the least-loaded endpoint's by more than ``spill_margin``, or it is busier at all and
holds less than ``min_gain`` of the prompt beyond what the least-loaded endpoint holds: then the
least-loaded one takes it, and the index notes that the prefix now lives there too. The second rule is
for prompts that share one long prefix everywhere (a common system prompt, cached on every replica
after its first use): a conversation's few turns of its own are not worth a longer queue.

Why CRC-32 and not Python's ``hash``: it is stable across processes, so router replicas that never
talk to each other place a *new* prefix alike (rendezvous hashing on its first block among the least
loaded endpoints), and one pass over the bytes in C keeps the choice at O(prompt length).

Endpoints are slots of the bitmask. An endpoint that leaves takes only its own entries with it; one
that joins starts empty and receives new prefixes by load (and wins the rendezvous for some), so a
replica change moves no prefix that lived elsewhere. Memory is bounded by ``capacity`` keys.
"""

from __future__ import annotations

import random
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["hit", "miss", "spill"]
_MASK32, _MASK64 = (1 << 32) - 1, (1 << 64) - 1
_DEPTH_SHIFT = 32  # key = depth << 32 | crc: two prefixes of different lengths never share a key


def render_prompt(payload: Mapping[str, Any] | None) -> str:
    """The text the prefix is taken from: chat messages in order (role, then the text content), or the
    completion prompt. Cheap string work only; anything unexpected renders as nothing."""
    if not payload:
        return ""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            parts.append(f"\x1e{message.get('role')}\x1f")
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content parts: only text says what the prefix is
                parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        return "".join(parts)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):  # several prompts: the first one leads the batch
            return first
        if isinstance(first, int):  # token ids
            return ",".join(str(t) for t in prompt if isinstance(t, int))
    return ""


def prefix_keys(text: str, block_size: int) -> list[int]:
    """One key per full block of ``text``'s UTF-8 bytes; key ``i`` depends on every byte before it."""
    data = memoryview(text.encode("utf-8", "surrogatepass"))
    keys: list[int] = []
    crc = 0
    crc32, append = zlib.crc32, keys.append
    for depth, start in enumerate(range(0, len(data) - block_size + 1, block_size)):
        crc = crc32(data[start:start + block_size], crc)
        append(depth << _DEPTH_SHIFT | crc)
    return keys


@dataclass(frozen=True, slots=True)
class Choice:
    endpoint: str
    outcome: Outcome
    matched_blocks: int


@dataclass(slots=True)
class EndpointStats:
    requests: int = 0
    hits: int = 0
    spills: int = 0  # requests spilled *to* this endpoint
    blocks: int = 0  # index keys that name this endpoint


class PrefixIndex:
    """LRU map of prefix key -> bitmask of endpoint slots, at most ``capacity`` keys."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[int, int] = OrderedDict()
        self._slots: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._free: list[int] = []
        self.blocks: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def slot(self, endpoint: str) -> int:
        bit = self._slots.get(endpoint)
        if bit is None:
            bit = self._free.pop() if self._free else len(self._slots)
            self._slots[endpoint] = bit
            self._names[bit] = endpoint
            self.blocks[endpoint] = 0
        return bit

    def mask(self, endpoints: Iterable[str]) -> int:
        mask = 0
        for endpoint in endpoints:
            mask |= 1 << self.slot(endpoint)
        return mask

    def match(self, keys: list[int], live: int) -> tuple[int, int]:
        """(depth, mask): the longest run of leading ``keys`` held together by endpoints of ``live``,
        and which endpoints hold all of it."""
        best, depth = live, 0
        get = self._entries.get
        for key in keys:
            holders = get(key, 0) & best
            if not holders:
                break
            best, depth = holders, depth + 1
        return depth, (best if depth else 0)

    def record(self, keys: list[int], endpoint: str) -> None:
        """``endpoint`` now holds every prefix in ``keys`` (most recent use)."""
        bit = 1 << self.slot(endpoint)
        entries = self._entries
        added = 0
        for key in keys:
            holders = entries.get(key)
            if holders is None:
                entries[key] = bit
                added += 1
            else:
                if not holders & bit:
                    entries[key] = holders | bit
                    added += 1
                entries.move_to_end(key)
        self.blocks[endpoint] += added
        while len(entries) > self.capacity:
            _, holders = entries.popitem(last=False)
            self._uncount(holders)

    def forget(self, endpoint: str) -> None:
        """Drop ``endpoint`` and every entry only it held (one pass over the index: replicas leave rarely)."""
        bit = self._slots.pop(endpoint, None)
        if bit is None:
            return
        del self._names[bit]
        del self.blocks[endpoint]
        clear = ~(1 << bit)
        entries = self._entries
        for key, holders in list(entries.items()):
            if holders >> bit & 1:
                if holders & clear:
                    entries[key] = holders & clear
                else:
                    del entries[key]
        self._free.append(bit)

    def _uncount(self, holders: int) -> None:
        while holders:
            low = holders & -holders
            self.blocks[self._names[low.bit_length() - 1]] -= 1
            holders ^= low


class PrefixAffinity:
    """Chooses an endpoint for a request from its prompt and the endpoints' outstanding counts."""

    def __init__(self, block_size: int = 128, capacity: int = 65536, spill_margin: int = 4,
                 min_gain: float = 0.1) -> None:
        if block_size < 1 or spill_margin < 0 or not 0 <= min_gain <= 1:
            raise ValueError("block_size must be >= 1, spill_margin >= 0 and min_gain within [0, 1]")
        self.block_size = block_size
        self.spill_margin = spill_margin
        self.min_gain = min_gain
        self.index = PrefixIndex(capacity)
        self.stats: dict[str, EndpointStats] = {}
        self.outcomes: dict[Outcome, int] = {"hit": 0, "miss": 0, "spill": 0}

    def keys(self, payload: Mapping[str, Any] | None) -> list[int]:
        return prefix_keys(render_prompt(payload), self.block_size)

    def choose(self, keys: list[int], load: Mapping[str, int]) -> Choice:
        """Pick one of ``load``'s endpoints (endpoint -> outstanding requests) and record the choice."""
        if not load:
            raise ValueError("no endpoint to choose from")
        index = self.index
        depth, holders = index.match(keys, index.mask(load))
        least = min(load.values())
        outcome: Outcome = "miss"
        pool = [e for e, n in load.items() if n == least]
        if depth:
            held = [e for e in load if holders >> index.slot(e) & 1]
            fewest = min(load[e] for e in held)
            if fewest - least > self.spill_margin:
                outcome = "spill"
            elif fewest > least and depth - index.match(keys, index.mask(pool))[0] < self.min_gain * len(keys):
                outcome = "spill"  # the least loaded holds nearly as much of this prompt
            else:
                outcome, pool = "hit", [e for e in held if load[e] == fewest]
        if len(pool) == 1:
            endpoint = pool[0]
        elif keys:
            endpoint = _rendezvous(pool, keys[0])
        else:  # nothing to be sticky about
            endpoint = random.choice(pool)
        index.record(keys, endpoint)
        stats = self.stats.setdefault(endpoint, EndpointStats())
        stats.requests += 1
        stats.hits += outcome == "hit"
        stats.spills += outcome == "spill"
        self.outcomes[outcome] += 1
        return Choice(endpoint, outcome, depth)

    def forget(self, endpoint: str) -> None:
        self.index.forget(endpoint)
        self.stats.pop(endpoint, None)

    def describe(self) -> dict[str, object]:
        return {"block_size": self.block_size, "spill_margin": self.spill_margin, "min_gain": self.min_gain,
                "capacity": self.index.capacity,
                "index_blocks": len(self.index), **self.outcomes}

    def endpoint_stats(self, endpoint: str) -> dict[str, int]:
        stats = self.stats.get(endpoint) or EndpointStats()
        return {"requests": stats.requests, "hits": stats.hits, "spills_in": stats.spills,
                "prefix_blocks": self.index.blocks.get(endpoint, 0)}


def _rendezvous(endpoints: list[str], first_key: int) -> str:
    """Highest-random-weight choice keyed by the prompt's first block: stable across router replicas,
    and a departing endpoint moves only the prefixes it won."""
    seed = first_key & _MASK32
    return max(endpoints, key=lambda e: (_mix(zlib.crc32(e.encode()) << 32 | seed), e))


def _mix(x: int) -> int:
    """splitmix64's finaliser: CRC is linear, so scores need mixing to rank endpoints fairly."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


__all__ = ["Choice", "EndpointStats", "Outcome", "PrefixAffinity", "PrefixIndex", "prefix_keys", "render_prompt"]
