"""raymaas.rl.replay.FastEpisodeReplayBuffer without Ray: the n-step transitions it samples are
the ones RLlib's EpisodeReplayBuffer answers (observations at t and t+n, the action at t, the
discounted n rewards, terminated only where the window reaches a terminated episode's end), read
from the stored columns instead of slices."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

from raymaas.rl.replay import FastEpisodeReplayBuffer

GAMMA = 0.9
OBS = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
ACT = gym.spaces.Discrete(7)


def episode(number: int, length: int, terminated: bool, numpy: bool) -> SingleAgentEpisode:
    """Observation t of episode e is (e, t); action t is t % 7; reward t is t + 1."""
    ep = SingleAgentEpisode(
        observations=[np.array([number, t], np.float32) for t in range(length + 1)],
        actions=[t % 7 for t in range(length)],
        rewards=[float(t + 1) for t in range(length)],
        infos=[{} for _ in range(length + 1)],
        terminated=terminated,
        observation_space=OBS,
        action_space=ACT,
        len_lookback_buffer=0,
    )
    if numpy:
        ep.to_numpy()
    return ep


def filled(cls, numpy: bool):
    buffer = cls(capacity=10_000)
    buffer.add([episode(0, 5, True, numpy), episode(1, 12, False, numpy), episode(2, 3, True, numpy)])
    return buffer, {0: (5, True), 1: (12, False), 2: (3, True)}


@pytest.mark.parametrize("numpy", [True, False])
@pytest.mark.parametrize("n_step", [1, 3, (1, 4)])
def test_every_sampled_transition_is_the_n_step_window_of_its_episode(numpy, n_step):
    buffer, lengths = filled(FastEpisodeReplayBuffer, numpy)
    sampled = buffer.sample(num_items=400, n_step=n_step, gamma=GAMMA, sample_episodes=True)
    assert len(sampled) == 400
    seen = set()
    for one in sampled:
        assert len(one) == 1
        e, t = (int(v) for v in one.get_observations(0))
        n = int(one.get_extra_model_outputs("n_step")[0])
        assert (n == n_step) if isinstance(n_step, int) else (n_step[0] <= n < n_step[1])
        length, terminated = lengths[e]
        end = min(t + n, length)
        assert tuple(one.get_observations(1)) == (e, end)
        assert one.get_actions(0) == t % 7
        expected = sum(GAMMA**k * (t + k + 1) for k in range(end - t))
        assert one.get_rewards(0) == pytest.approx(expected)
        assert one.is_terminated == (terminated and t + n >= length)
        assert one.get_extra_model_outputs("weights")[0] == 1.0
        seen.add((e, t))
    assert len(seen) == 20  # 400 draws over the 20 stored transitions: each was drawn
    metrics = buffer.get_metrics()
    assert metrics, "the sample metrics are recorded as the parent's are"


def test_the_parent_answers_the_same_transition_for_the_same_pick():
    """One stored transition, picked by both buffers: the same one-step episode."""
    ours, _ = filled(FastEpisodeReplayBuffer, True)
    theirs, _ = filled(EpisodeReplayBuffer, True)
    for buffer in (ours, theirs):  # only episode 1's step 9 (length 12, not terminated) is left to draw
        buffer._indices = [(1, 9)]
    a = ours.sample(num_items=1, n_step=3, gamma=GAMMA, sample_episodes=True)[0]
    b = theirs.sample(num_items=1, n_step=3, gamma=GAMMA, sample_episodes=True)[0]
    for get in ("get_observations", "get_actions", "get_rewards"):
        np.testing.assert_allclose(np.asarray(getattr(a, get)()), np.asarray(getattr(b, get)()), rtol=1e-6)
    assert (a.is_terminated, a.is_truncated) == (b.is_terminated, b.is_truncated)
    assert a.get_extra_model_outputs("n_step")[0] == b.get_extra_model_outputs("n_step")[0] == 3


def test_sequence_sampling_is_left_to_rllib():
    buffer, _ = filled(FastEpisodeReplayBuffer, True)
    sampled = buffer.sample(num_items=4, batch_length_T=2, n_step=1, gamma=GAMMA, sample_episodes=True)
    assert sampled and all(len(s) >= 1 for s in sampled)
