"""Which version answers a request during a rollout (raymaas.serving.routing), without Ray."""

from __future__ import annotations

import random

from raymaas.serving.routing import Rollout, bucket, route

CHAMPION, CANDIDATE = "v1", "v2"  # route() hands back what it was given: names stand for LoadedModels


def test_without_a_rollout_or_at_share_0_the_followed_version_answers():
    assert route(CHAMPION, None, "k").answer == CHAMPION
    assert route(CHAMPION, Rollout(CANDIDATE, 0, "canary"), "k") == route(CHAMPION, None)


def test_a_key_always_gets_the_same_version_and_stays_on_the_candidate_as_the_share_grows():
    keys = [f"client-{i}" for i in range(2000)]
    assert [bucket(k) for k in keys] == [bucket(k) for k in keys]  # the same in every process (no salted hash())
    previous = set()
    for share in (10, 25, 50, 100):
        rollout = Rollout(CANDIDATE, share, "canary")
        on_candidate = {k for k in keys if route(CHAMPION, rollout, k).answer == CANDIDATE}
        assert all(route(CHAMPION, rollout, k).answer == CANDIDATE for k in on_candidate)  # sticky
        assert previous <= on_candidate  # nobody moves back to the champion as the share grows
        assert abs(len(on_candidate) / len(keys) - share / 100) < 0.04, (share, len(on_candidate))
        previous = on_candidate
    assert len(previous) == len(keys)


def test_requests_without_a_key_are_split_at_random_by_the_share():
    rng = random.Random(0)
    rollout = Rollout(CANDIDATE, 25, "canary")
    answers = [route(CHAMPION, rollout, None, rng).answer for _ in range(4000)]
    assert abs(answers.count(CANDIDATE) / 4000 - 0.25) < 0.03


def test_shadow_answers_with_the_followed_version_and_copies_the_share_to_the_candidate():
    rng = random.Random(1)
    rollout = Rollout(CANDIDATE, 30, "shadow")
    routes = [route(CHAMPION, rollout, None, rng) for _ in range(4000)]
    assert {r.answer for r in routes} == {CHAMPION}
    copied = sum(r.shadow == CANDIDATE for r in routes)
    assert abs(copied / 4000 - 0.3) < 0.03
    keyed = Rollout(CANDIDATE, 50, "shadow")
    assert {route(CHAMPION, keyed, "same-key").shadow for _ in range(20)} in ({None}, {CANDIDATE})
