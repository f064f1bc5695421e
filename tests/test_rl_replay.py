"""raymaas.rl.replay.ColumnReplayBuffer without Ray: every n-step transition it samples is the
window of its episode that RLlib's EpisodeReplayBuffer answers (observations at t and at the
window's end, the action at t, the discounted rewards, terminated only where the window reaches
a terminated episode's end), from chunks of running episodes linked as they arrive, and with the
oldest steps overwritten once the buffer is full; RLlib builds it, and its own training step is
refused by name."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.from_config import from_config
from ray.rllib.utils.replay_buffers import ReplayBuffer

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


def test_the_stored_steps_are_the_steps_added_up_to_the_capacity():
    """The steps stored are the steps ever added up to the capacity: RLlib's __len__,
    get_num_timesteps and the parent's own count agree."""
    buffer = ColumnReplayBuffer(capacity=10)
    buffer.add([episode(0, 4, True)])
    assert len(buffer) == buffer.get_num_timesteps() == buffer._num_timesteps == 4
    buffer.add([episode(1, 9, True)])
    assert len(buffer) == buffer.get_num_timesteps() == buffer._num_timesteps == 10
    assert buffer.get_added_timesteps() == 13
    assert buffer.get_num_episodes() == 1  # episode 0's first step is overwritten


def test_a_running_episode_is_forgotten_once_its_newest_step_is_overwritten():
    """An episode that never finishes (its env runner restarted mid-episode) is not kept for
    ever; one whose newest step is still stored is, and its next chunk is linked."""
    buffer = ColumnReplayBuffer(capacity=10)
    abandoned = chunks(episode(1, 9, True), [3, 6])[0]
    running, rest = chunks(episode(2, 9, True), [3, 6])
    buffer.add([abandoned])  # serials 0-2
    buffer.add([episode(0, 7, True)])  # serials 3-9: the buffer is full, nothing overwritten
    assert set(buffer.get_state()["running"]) == {abandoned.id_}
    buffer.add([running])  # serials 10-12 overwrite the abandoned chunk
    assert set(buffer.get_state()["running"]) == {running.id_}
    buffer.add([rest])
    assert buffer.get_state()["running"] == {}
    batch = buffer.sample_batch(400, n_step=3, gamma=GAMMA)
    assert {tuple(o) for o in batch["new_obs"][(batch["obs"] == (2, 2)).all(axis=1)]} == {(2, 5)}


def test_rllib_builds_it_and_its_dqn_config_accepts_it():
    """RLlib builds the buffer from replay_buffer_config (Algorithm.setup's from_config), and
    DQNConfig.validate accepts the class itself as the type: it is an EpisodeReplayBuffer."""
    import ray

    config = DQNConfig().environment("CartPole-v1")
    config.training(replay_buffer_config={"type": "raymaas.rl.replay.ColumnReplayBuffer", "capacity": 50})
    buffer = from_config(ReplayBuffer, dict(config.replay_buffer_config))
    assert isinstance(buffer, ColumnReplayBuffer) and buffer.capacity == 50 and len(buffer) == 0
    config.training(replay_buffer_config={"type": ColumnReplayBuffer, "capacity": 50}).validate()
    assert not ray.is_initialized()


def test_rllibs_own_training_step_is_refused_by_name():
    """RLlib's DQN step (a stateful module's sequences, or RLlib's DQN class) samples episodes;
    this buffer answers only raymaas.rl.dqn.DQN's sample_batch."""
    buffer, _ = filled()
    with pytest.raises(ValueError, match="sample_batch.*batch_length_T=20.*EpisodeReplayBuffer"):
        # what RLlib 2.60's DQN._training_step_new_api_stack passes for a stateful module
        buffer.sample(
            num_items=4,
            n_step=1,
            batch_length_T=20,
            lookback=1,
            min_batch_length_T=0,
            gamma=GAMMA,
            beta=None,
            sample_episodes=True,
        )
    with pytest.raises(ValueError, match="empty"):
        ColumnReplayBuffer(capacity=5).sample_batch(4)


def test_state_round_trip():
    buffer, lengths = filled()
    restored = ColumnReplayBuffer(capacity=10_000)
    state = buffer.get_state()
    restored.set_state(state)
    # a state is a copy (the buffer goes on filling), and rows sit by the count modulo the
    # capacity: another capacity is refused
    assert all(state["columns"][k] is not buffer._columns[k] for k in state["columns"])
    with pytest.raises(ValueError, match="capacity 10000 set into one of 50"):
        ColumnReplayBuffer(capacity=50).set_state(state)
    assert len(restored) == 20
    batch = restored.sample_batch(100, n_step=3, gamma=GAMMA)
    for i in range(100):
        e, t = (int(v) for v in batch["obs"][i])
        check_window(
            e, t, 3, batch["new_obs"][i], batch["actions"][i], batch["rewards"][i], batch["terminateds"][i], lengths
        )
