"""A replay buffer for RLlib's DQN that keeps transitions in flat columns, not episodes.

RLlib's EpisodeReplayBuffer stores each episode as a SingleAgentEpisode (deep-copying every
chunk it is given, concatenating the chunks of a running episode) and answers each sampled
n-step transition by slicing its episode and building a one-step episode from the slice, which
the learner's connectors then turn back into columns. Measured here (bench/rl_profile.py, the
DQN spec on CartPole): sampling 41% of a training iteration and the connectors 6%, where the
forward and backward passes took 4%; a version that read the stored episodes' columns per
sampled row still spent 21% of an iteration sampling.

`ColumnReplayBuffer` keeps every stored env step as one row of fixed-size arrays (a ring of
`capacity` rows, the oldest overwritten first): the observation, the action, the reward, the
next observation, whether the episode terminated or was truncated after it, and the row of the
same episode's next step (linked when the next chunk of a running episode arrives). An n-step
transition is then a few vectorized gathers along those links for the whole batch:
(o_t, a_t, sum of gamma^k r_(t+k) over the window, o_end, terminated at end) with the window
ending after n steps, at the episode's end, or at the newest step stored so far, as RLlib's
buffer answers it (and like it, the `n_step` column is the n drawn). `sample_batch` returns
those columns as numpy arrays, what raymaas.rl.dqn.DQN hands the learner.

It answers nothing else: RLlib's own training step (`sample`: one-step episodes, or sequences
for a stateful module) is refused by name. Use it from a spec:
`training.replay_buffer_config.type: raymaas.rl.replay.ColumnReplayBuffer` (RLlib imports a
buffer class by its path; an `algo: dqn` spec builds raymaas.rl.dqn.DQN).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.core import DEFAULT_AGENT_ID, DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

_NONE = -1  # no next row (yet): the episode ended here, or its next chunk has not arrived


class ColumnReplayBuffer(EpisodeReplayBuffer):
    """Uniform n-step replay over flat columns (see the module's docstring).

    It subclasses EpisodeReplayBuffer, whose episode storage stays empty, for its add and
    sample metrics (`get_metrics`) and because DQNConfig.validate (ray 2.60) refuses a buffer
    `type` given as a class that is not one. Its one counter is EpisodeReplayBuffer's
    `_num_timesteps_added`: the steps ever stored, so also the serial number of the next step,
    whose row is that number modulo `capacity`."""

    def __init__(self, capacity: int = 10000, **kwargs):
        super().__init__(capacity=capacity, **kwargs)
        self._columns: dict[str, np.ndarray] | None = None  # allocated at the first add
        # Episode id -> serial of its newest stored step, for running episodes whose newest
        # step is still stored (one whose env runner was restarted mid-episode never finishes).
        self._running: dict[str, int] = {}

    @property
    def _num_timesteps(self) -> int:
        """EpisodeReplayBuffer's count of stored steps, derived from the steps ever stored."""
        return min(self._num_timesteps_added, self.capacity)

    @_num_timesteps.setter
    def _num_timesteps(self, _) -> None:
        pass  # only EpisodeReplayBuffer.__init__ assigns it (0): its add and set_state are overridden

    # ------------------------------------------------------------------ storing

    def add(self, episodes) -> None:
        episodes = episodes if isinstance(episodes, list) else [episodes]
        steps = done = evicted_steps = 0
        for episode in episodes:
            length = len(episode)
            if length == 0:
                continue
            obs = np.asarray(episode.get_observations(), dtype=np.float32).reshape(length + 1, -1)
            if self._columns is None:
                self._allocate(obs.shape[1], np.asarray(episode.get_actions()).dtype)
            evicted_steps += max(0, self._num_timesteps + length - self.capacity)
            self._store(episode, obs, length)
            steps += length
            done += int(episode.is_done)
        # Forget running episodes whose newest step has been overwritten: nothing links to it.
        self._running = {id_: serial for id_, serial in self._running.items() if self._stored(serial)}
        agent, module = DEFAULT_AGENT_ID, DEFAULT_MODULE_ID
        self._update_add_metrics(
            num_episodes_added=done,
            num_env_steps_added=steps,
            num_episodes_evicted=0,
            num_env_steps_evicted=evicted_steps,
            agent_to_num_episodes_added={agent: done},
            agent_to_num_steps_added={agent: steps},
            agent_to_num_episodes_evicted={agent: 0},
            agent_to_num_steps_evicted={agent: evicted_steps},
            module_to_num_steps_added={module: steps},
            module_to_num_episodes_added={module: done},
            module_to_num_episodes_evicted={module: 0},
            module_to_num_steps_evicted={module: evicted_steps},
        )

    def _allocate(self, obs_size: int, action_dtype) -> None:
        c = self.capacity
        self._columns = {
            "obs": np.zeros((c, obs_size), np.float32),
            "next_obs": np.zeros((c, obs_size), np.float32),
            "actions": np.zeros(c, action_dtype),
            "rewards": np.zeros(c, np.float64),
            "terminated": np.zeros(c, bool),
            "truncated": np.zeros(c, bool),
            "next": np.full(c, _NONE, np.int64),
            "first": np.zeros(c, bool),  # an episode's first step
        }

    def _stored(self, serial: int) -> bool:
        """Whether the step with this serial number still holds its row."""
        return serial >= self._num_timesteps_added - self.capacity

    def _store(self, episode, obs: np.ndarray, length: int) -> None:
        cols, c = self._columns, self.capacity
        first_serial = self._num_timesteps_added
        rows = (first_serial + np.arange(length)) % c
        cols["obs"][rows] = obs[:-1]
        cols["next_obs"][rows] = obs[1:]
        cols["actions"][rows] = np.asarray(episode.get_actions())
        cols["rewards"][rows] = np.asarray(episode.get_rewards(), dtype=np.float64)
        cols["terminated"][rows] = False
        cols["truncated"][rows] = False
        cols["terminated"][rows[-1]] = episode.is_terminated
        cols["truncated"][rows[-1]] = episode.is_truncated
        cols["next"][rows[:-1]] = rows[1:]
        cols["next"][rows[-1]] = _NONE
        cols["first"][rows] = False
        cols["first"][rows[0]] = episode.t_started == 0
        self._num_timesteps_added += length
        # Link the episode's previous chunk to this one, if its last step is still stored.
        previous = self._running.pop(episode.id_, None)
        if previous is not None and self._stored(previous):
            cols["next"][previous % c] = rows[0]
        if not episode.is_done:
            self._running[episode.id_] = first_serial + length - 1

    # ------------------------------------------------------------------ sampling

    def sample_batch(self, batch_size: int, *, n_step=1, gamma: float = 0.99) -> dict[str, np.ndarray]:
        """batch_size uniformly sampled n-step transitions as the columns DQN's loss reads:
        obs, new_obs, actions, rewards (the discounted window sum), terminateds and truncateds
        (at the window's end), n_step (the n drawn: an int, or a [low, high) tuple drawn per
        transition) and weights (ones: uniform replay)."""
        if self._num_timesteps == 0:
            raise ValueError("ColumnReplayBuffer is empty: nothing to sample")
        rows, ns, last, returns = self._windows(batch_size, n_step, gamma)
        cols = self._columns
        return {
            Columns.OBS: cols["obs"][rows],
            Columns.NEXT_OBS: cols["next_obs"][last],
            Columns.ACTIONS: cols["actions"][rows],
            Columns.REWARDS: returns.astype(np.float32),
            Columns.TERMINATEDS: cols["terminated"][last],
            Columns.TRUNCATEDS: cols["truncated"][last],
            "n_step": ns.astype(np.float32),
            "weights": np.ones(batch_size, np.float32),
        }

    def _windows(self, batch_size: int, n_step, gamma: float):
        """Uniform rows, their n, the last row of each window and its discounted return;
        records the sample metrics."""
        cols, rng = self._columns, self.rng
        rows = rng.integers(self._num_timesteps, size=batch_size)
        if isinstance(n_step, tuple):
            ns = rng.integers(n_step[0], n_step[1], size=batch_size)
        else:
            ns = np.full(batch_size, int(n_step))
        returns = np.zeros(batch_size)
        last = rows.copy()
        current = rows.copy()
        walking = np.ones(batch_size, bool)
        discount = 1.0
        for k in range(int(ns.max())):
            walking &= k < ns
            returns[walking] += discount * cols["rewards"][current[walking]]
            last[walking] = current[walking]
            following = cols["next"][current]
            walking &= following != _NONE
            current = np.where(walking, following, current)
            discount *= gamma
        self.sampled_timesteps += batch_size
        self._record(batch_size, len(np.unique(rows)), float(ns.mean()))
        return rows, ns, last, returns

    def sample(self, num_items=None, *, batch_length_T=None, **kwargs):
        # Reached from RLlib's own DQN step (a stateful module, RLlib's DQN class): refuse by name.
        raise ValueError(
            "ColumnReplayBuffer answers raymaas.rl.dqn.DQN's sample_batch (single n-step transitions), not "
            f"RLlib's own training step (sample with batch_length_T={batch_length_T!r}, sequences for a "
            "stateful module): use RLlib's EpisodeReplayBuffer there"
        )

    def _record(self, steps: int, distinct_steps: int, mean_n_step: float) -> None:
        """The sample metrics RLlib's buffer records (single agent; episodes are not tracked)."""
        agent, module = DEFAULT_AGENT_ID, DEFAULT_MODULE_ID
        self._update_sample_metrics(
            num_env_steps_sampled=steps,
            num_episodes_per_sample=0,
            num_env_steps_per_sample=distinct_steps,
            sampled_n_step=mean_n_step,
            num_resamples=0,
            agent_to_num_steps_sampled={agent: steps},
            agent_to_num_episodes_per_sample={agent: 0},
            agent_to_num_steps_per_sample={agent: distinct_steps},
            agent_to_sampled_n_step={agent: mean_n_step},
            agent_to_num_resamples={agent: 0},
            module_to_num_steps_sampled={module: steps},
            module_to_num_episodes_per_sample={module: 0},
            module_to_num_steps_per_sample={module: distinct_steps},
            module_to_sampled_n_step={module: mean_n_step},
            module_to_num_resamples={module: 0},
        )

    # ------------------------------------------------------------------ bookkeeping

    def get_num_timesteps(self, module_id=None) -> int:
        return self._num_timesteps

    def get_num_episodes(self, module_id=None) -> int:
        """Episodes whose first step is still stored."""
        return 0 if self._columns is None else int(np.count_nonzero(self._columns["first"][: self._num_timesteps]))

    def get_state(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "columns": None if self._columns is None else {k: v.copy() for k, v in self._columns.items()},
            "running": dict(self._running),
            "added": self._num_timesteps_added,
            "sampled": self.sampled_timesteps,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        # rows are placed by the count of steps added modulo the capacity
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"a ColumnReplayBuffer state of capacity {state['capacity']} set into one of {self.capacity}"
            )
        self._columns = state["columns"]
        self._running = dict(state["running"])
        self._num_timesteps_added, self.sampled_timesteps = state["added"], state["sampled"]
