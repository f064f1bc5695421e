"""raymaas.rl.replay.ColumnReplayBuffer without Ray: every n-step transition it samples is the
window of its episode that RLlib's EpisodeReplayBuffer answers (observations at t and at the
window's end, the action at t, the discounted rewards, terminated only where the window reaches
a terminated episode's end), from chunks of running episodes linked as they arrive, and with the
oldest steps overwritten once the buffer is full."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from raymaas.rl.replay import ColumnReplayBuffer

GAMMA = 0.9
OBS = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
ACT = gym.spaces.Discrete(7)


def episode(number: int, length: int, terminated: bool, numpy: bool = True) -> SingleAgentEpisode:
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


def chunks(ep: SingleAgentEpisode, sizes: list[int]) -> list[SingleAgentEpisode]:
    """ep cut as an EnvRunner hands it over: successive chunks of one id, the last one done."""
    out, start = [], 0
    for size in sizes:
        out.append(ep[start : start + size] if start + size < len(ep) else ep[start:])
        start += size
    return out


def filled(numpy: bool = True) -> tuple[ColumnReplayBuffer, dict[int, tuple[int, bool]]]:
    """Three episodes, the second arriving in three chunks interleaved with the others."""
    buffer = ColumnReplayBuffer(capacity=10_000)
    long = chunks(episode(1, 12, False, numpy), [4, 5, 3])
    buffer.add([long[0], episode(0, 5, True, numpy)])
    buffer.add([long[1]])
    buffer.add([episode(2, 3, True, numpy), long[2]])
    return buffer, {0: (5, True), 1: (12, False), 2: (3, True)}


def check_window(e: int, t: int, n: int, obs_end, action, reward, terminated, lengths, known_length=None):
    length, ends_terminated = lengths[e]
    end = min(t + n, known_length if known_length is not None else length)
    assert tuple(obs_end) == (e, end)
    assert action == t % 7
    assert reward == pytest.approx(sum(GAMMA**k * (t + k + 1) for k in range(end - t)), rel=1e-6)
    assert terminated == (ends_terminated and t + n >= length)


@pytest.mark.parametrize("numpy", [True, False])
@pytest.mark.parametrize("n_step", [1, 3, (1, 4)])
def test_every_sampled_row_is_the_n_step_window_of_its_episode(numpy, n_step):
    buffer, lengths = filled(numpy)
    assert len(buffer) == 20
    batch = buffer.sample_batch(400, n_step=n_step, gamma=GAMMA)
    seen = set()
    for i in range(400):
        e, t = (int(v) for v in batch["obs"][i])
        n = int(batch["n_step"][i])
        assert (n == n_step) if isinstance(n_step, int) else (n_step[0] <= n < n_step[1])
        check_window(
            e, t, n, batch["new_obs"][i], batch["actions"][i], batch["rewards"][i], batch["terminateds"][i], lengths
        )
        assert not batch["truncateds"][i]
        seen.add((e, t))
    assert len(seen) == 20  # 400 draws over the 20 stored steps: each was drawn
    assert batch["obs"].dtype == batch["new_obs"].dtype == batch["rewards"].dtype == np.float32
    assert batch["weights"].tolist() == [1.0] * 400
    assert buffer.get_metrics(), "the sample metrics are recorded as RLlib's buffer records them"


def test_a_window_stops_at_the_newest_step_of_a_running_episode():
    """A running episode's window ends where its stored steps end (not terminated), as RLlib's
    buffer answers; once its next chunk arrives the same step's window goes on."""
    ep = episode(1, 12, False)
    first, rest = chunks(ep, [6, 6])
    buffer = ColumnReplayBuffer(capacity=100)
    buffer.add([first])
    lengths = {1: (12, False)}
    batch = buffer.sample_batch(200, n_step=3, gamma=GAMMA)
    for i in range(200):
        e, t = (int(v) for v in batch["obs"][i])
        check_window(e, t, 3, batch["new_obs"][i], batch["actions"][i], batch["rewards"][i], False, lengths, 6)
    buffer.add([rest])
    batch = buffer.sample_batch(400, n_step=3, gamma=GAMMA)
    assert {tuple(o) for o in batch["new_obs"][batch["obs"][:, 1] == 5]} == {(1, 8)}


def test_the_oldest_steps_are_overwritten_and_links_into_them_dropped():
    buffer = ColumnReplayBuffer(capacity=10)
    long = chunks(episode(1, 9, True), [4, 5])
    buffer.add([long[0]])  # rows 0-3
    buffer.add([episode(0, 8, True)])  # rows 4-9, then 0-1: overwrites two of episode 1's steps
    buffer.add([long[1]])  # overwrites 2-6: the rest of episode 1's first chunk and some of episode 0
    assert len(buffer) == 10
    batch = buffer.sample_batch(500, n_step=3, gamma=GAMMA)
    stored = {tuple(int(v) for v in o) for o in batch["obs"]}
    # episode 0's steps 3-7 and episode 1's 4-8: the ten newest
    assert stored == {(0, t) for t in range(3, 8)} | {(1, t) for t in range(4, 9)}
    lengths = {0: (8, True), 1: (9, True)}
    for i in range(500):
        e, t = (int(v) for v in batch["obs"][i])
        check_window(
            e, t, 3, batch["new_obs"][i], batch["actions"][i], batch["rewards"][i], batch["terminateds"][i], lengths
        )


def test_one_step_episodes_for_rllibs_own_training_step():
    buffer, lengths = filled()
    sampled = buffer.sample(num_items=200, n_step=3, gamma=GAMMA, sample_episodes=True)
    assert len(sampled) == 200
    for one in sampled:
        assert len(one) == 1
        e, t = (int(v) for v in one.get_observations(0))
        assert one.get_extra_model_outputs("n_step")[0] == 3
        assert one.get_extra_model_outputs("weights")[0] == 1.0
        check_window(
            e, t, 3, one.get_observations(1), one.get_actions(0), one.get_rewards(0), one.is_terminated, lengths
        )


def test_sequences_are_refused_by_name():
    buffer, _ = filled()
    with pytest.raises(ValueError, match="not sequences.*batch_length_T=2.*EpisodeReplayBuffer"):
        buffer.sample(num_items=4, batch_length_T=2, n_step=1, gamma=GAMMA, sample_episodes=True)
    with pytest.raises(ValueError, match="empty"):
        ColumnReplayBuffer(capacity=5).sample_batch(4)


def test_state_round_trip():
    buffer, lengths = filled()
    restored = ColumnReplayBuffer(capacity=10_000)
    restored.set_state(buffer.get_state())
    assert len(restored) == 20
    batch = restored.sample_batch(100, n_step=3, gamma=GAMMA)
    for i in range(100):
        e, t = (int(v) for v in batch["obs"][i])
        check_window(
            e, t, 3, batch["new_obs"][i], batch["actions"][i], batch["rewards"][i], batch["terminateds"][i], lengths
        )
