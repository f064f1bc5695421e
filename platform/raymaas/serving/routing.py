"""Which version answers a request: the one function where a rollout's traffic split lives.

Without a rollout every request goes to the version the endpoint follows (its alias, e.g.
`champion`). During a rollout (raymaas.tracking.rollout: its state is in the registry, and
every replica reads it there) the candidate version is loaded beside it, and `route`:

- canary: sends `share` percent of requests to the candidate. A request that carries
  `x-raymaas-key` is placed by a hash of the key, so a key always gets the same version while
  the share stands, and a key on the candidate stays there as the share grows (its bucket is
  below every later share too); a request without one is placed at random.
- shadow: answers every request with the followed version, and sends a copy of `share`
  percent (placed the same way) to the candidate, whose answer is recorded, not returned.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

STICKY_HEADER = "x-raymaas-key"
_BUCKETS = 10_000  # a share is placed to 0.01 percent


@dataclass(frozen=True)
class Rollout:
    """A rollout as a replica serves it: the candidate's loaded version, its share (percent)
    and whether it answers (canary) or only sees copies (shadow)."""

    candidate: Any  # raymaas.serving.following.LoadedModel
    share: int
    mode: str  # canary | shadow


@dataclass(frozen=True)
class Route:
    """The version that answers a request, and the one that gets a copy of it (shadow), if any."""

    answer: Any
    shadow: Any = None


def bucket(key: str) -> float:
    """A key's place in [0, 100): the same for a key on every replica and in every process
    (Python's hash() is salted per process, so it would not do)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % _BUCKETS) * 100 / _BUCKETS


def route(followed: Any, rollout: Rollout | None, key: str | None = None, rng: random.Random | None = None) -> Route:
    """The Route of a request: followed (a LoadedModel) answers unless a canary's share takes it."""
    if rollout is None or rollout.share <= 0:
        return Route(followed)
    place = bucket(key) if key else (rng or random).random() * 100
    chosen = place < rollout.share
    if rollout.mode == "shadow":
        return Route(followed, rollout.candidate if chosen else None)
    return Route(rollout.candidate if chosen else followed)
