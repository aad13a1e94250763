"""Leader election between the bot's replicas: the lease is a named Ray actor owned by its holder.

Whoever creates the actor holds the lease; the name is unique cluster-wide, so exactly one creation
succeeds. A non-detached actor dies with the process that owns it, so when the leader's replica dies
the name frees itself and the next follower to try takes over. The holder pings the actor and steps
down if it is gone (its replica is alive but the actor was killed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import ray

logger = logging.getLogger("ray.serve")
# An explicit namespace: a replica's own namespace is Serve's business, and operators (and tests)
# look the lease up from drivers of their own.
LEASE_NAMESPACE = "ray-serve-cai"


@ray.remote(num_cpus=0, max_restarts=0)
class _LeaseActor:
    def __init__(self, holder: str) -> None:
        self.holder = holder

    def whois(self) -> str:
        return self.holder


def lease_name(app_name: str, user_id: str) -> str:
    return f"rsc-matrix-lease-{app_name}-{hashlib.sha256(user_id.encode()).hexdigest()[:12]}"


class Lease:
    def __init__(self, name: str, holder: str, check_every: float) -> None:
        self.name = name
        self.holder = holder
        self.check_every = check_every
        self._actor: ray.actor.ActorHandle | None = None

    @property
    def held(self) -> bool:
        return self._actor is not None

    async def try_acquire(self) -> bool:
        """Create the lease actor; False when another live holder has it."""
        try:
            actor = _LeaseActor.options(name=self.name, namespace=LEASE_NAMESPACE, lifetime=None).remote(self.holder)
        except ValueError:  # the name is taken: someone holds the lease
            return False
        try:
            await actor.whois.remote()
            # two creators can both pass Ray's name check; the name's registration picks one
            current = await asyncio.to_thread(ray.get_actor, self.name, LEASE_NAMESPACE)
        except (ray.exceptions.RayError, ValueError):
            return False
        if current._actor_id != actor._actor_id:
            ray.kill(actor, no_restart=True)
            return False
        self._actor = actor
        logger.info("matrix bot: %s took the lease %s", self.holder, self.name)
        return True

    async def still_held(self) -> bool:
        if self._actor is None:
            return False
        try:
            holder = await asyncio.wait_for(self._actor.whois.remote(), self.check_every * 2)
        except (TimeoutError, ray.exceptions.RayError):
            logger.warning("matrix bot: %s lost the lease %s", self.holder, self.name)
            self._actor = None
            return False
        return holder == self.holder

    def release(self) -> None:
        if self._actor is not None:
            ray.kill(self._actor, no_restart=True)
            self._actor = None
