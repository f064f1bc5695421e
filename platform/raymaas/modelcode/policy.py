"""Policies without Ray: greedy rollouts on gymnasium environments, and the parity check.

A policy here is any function from a float32 batch of observations [n, obs_dim] to int64
actions [n]: the RLlib module during training, or the registered MLflow model (a
`raymaas.modelcode.pyfunc.TorchClassifier` over the exported network) anywhere else. Episode i of an
evaluation always starts from `env.reset(seed=seed + i)`, so two policies that act alike
score alike.

Imports numpy (and gymnasium when a rollout runs) only: it ships with every registered model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

Act = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Evaluation:
    """Greedy episode returns, episode i seeded with seed + i."""

    env: str
    seed: int
    returns: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def min(self) -> float:
        return float(np.min(self.returns))

    def metrics(self) -> dict[str, float]:
        return {"eval_return_mean": self.mean, "eval_return_std": self.std, "eval_return_min": self.min}

    def to_dict(self) -> dict:
        return {**asdict(self), **self.metrics()}


def evaluate_greedy(act: Act, env_id: str, episodes: int, seed: int) -> Evaluation:
    """Play `episodes` episodes side by side, one batched act() call per step for all of them."""
    import gymnasium as gym

    envs = [gym.make(env_id) for _ in range(episodes)]
    try:
        obs = np.stack([np.asarray(env.reset(seed=seed + i)[0], dtype=np.float32) for i, env in enumerate(envs)])
        returns = np.zeros(episodes)
        alive = np.ones(episodes, dtype=bool)
        while alive.any():
            playing = np.flatnonzero(alive)
            actions = np.asarray(act(obs[playing]))
            for i, action in zip(playing, actions):
                o, reward, terminated, truncated, _ = envs[i].step(int(action))
                obs[i] = o
                returns[i] += reward
                if terminated or truncated:
                    alive[i] = False
    finally:
        for env in envs:
            env.close()
    return Evaluation(env_id, seed, [float(r) for r in returns])


def collect_observations(act: Act, env_id: str, n: int, seed: int, epsilon: float = 0.25) -> np.ndarray:
    """At least n observations the policy meets, with an epsilon share of random actions so
    that they reach beyond the greedy path (where a near-tie would go unnoticed)."""
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    env = gym.make(env_id)
    env.action_space.seed(seed)
    seen: list[np.ndarray] = []
    try:
        episode = 0
        while len(seen) < n:
            o, _ = env.reset(seed=seed + episode)
            episode += 1
            done = False
            while not done and len(seen) < n:
                o = np.asarray(o, dtype=np.float32)
                seen.append(o)
                action = env.action_space.sample() if rng.random() < epsilon else int(act(o[None])[0])
                o, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
    finally:
        env.close()
    return np.stack(seen)


def action_mismatches(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Indices where two policies' actions on the same observations differ (shape included)."""
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape:
        raise ValueError(f"action batches differ in shape: {expected.shape} vs {got.shape}")
    return np.flatnonzero(expected.astype(np.int64) != got.astype(np.int64))
