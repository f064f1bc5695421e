"""A peer of the platform's RL jobs: Stable-Baselines3 with the RL Baselines3 Zoo's settings, in one process.

    .venv/bin/python bench/peers/sb3_cartpole.py ppo --hyperparams JSON [--seed S] [--env CartPole-v1]

What most people would run instead of the platform: SB3 (the `bench` extra, `make bench-deps`)
with one algorithm entry of the Zoo's hyperparams/ALGO.yml, given as JSON by
bench/rl_time_to_solve.py (which holds the Zoo's CartPole-v1 entries). The entry is built as the
Zoo's ExperimentManager builds it: `make_vec_env(env, n_envs, seed)` (DummyVecEnv, Monitor),
`lin_X` as the Zoo's SimpleLinearSchedule (progress_remaining * X), policy_kwargs as given, the
model seeded with --seed, then `model.learn(n_timesteps)`, so that the schedules decay over the
Zoo's budget and not over the benchmark's.

Every --eval-every env steps it prints a line that bench/rl_time_to_solve.py reads as it reads
the platform job's, `sb3: iteration N: STEPS env steps, return R[, greedy G] (ELAPSED s)`: R is
the mean return of the last 100 training episodes (SB3's window, as RLlib's), G the mean of the
platform's own greedy evaluation (raymaas.modelcode.policy.evaluate_greedy: --episodes episodes,
episode i from reset(seed=--eval-seed + i), deterministic actions), run only while R is at least
--min-episode-return, as the platform job's evaluation gate. Exits 0 at the first G >= --target;
1 if the Zoo's n_timesteps run out first. Needs no Ray and writes no files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from raymaas.modelcode.policy import evaluate_greedy

ALGOS = {"ppo": PPO, "dqn": DQN}
# Hyperparameters the Zoo reads itself rather than passing them to the algorithm.
_ZOO_ONLY = ("n_envs", "n_timesteps", "normalize")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("algo", choices=sorted(ALGOS), help="SB3 algorithm")
    p.add_argument("--hyperparams", required=True, help="the Zoo's entry for env and algo, as JSON")
    p.add_argument("--env", default="CartPole-v1", help="gymnasium env id")
    p.add_argument("--seed", type=int, default=0, help="seeds the envs and the model (the Zoo's --seed)")
    p.add_argument("--eval-every", type=int, default=1000, help="check every this many env steps")
    p.add_argument("--episodes", type=int, default=20, help="greedy episodes per evaluation")
    p.add_argument("--eval-seed", type=int, default=1_000_000, help="seed of the first evaluation episode")
    p.add_argument("--min-episode-return", type=float, default=0.0, help="evaluate only while R is at least this")
    p.add_argument("--target", type=float, default=475.0, help="stop at the first greedy mean at least this")
    return p.parse_args(argv)


def linear_schedule(initial_value: float):
    """The Zoo's `lin_X`: X at the start of learn(), falling linearly to 0 at n_timesteps."""
    return lambda progress_remaining: progress_remaining * initial_value


def build(algo: str, env_id: str, hyperparams: dict, seed: int):
    """The model as the Zoo's ExperimentManager.setup_experiment builds it for this entry."""
    if hyperparams.get("normalize"):
        raise ValueError("a Zoo entry with normalize: the greedy evaluation would see unnormalized observations")
    kwargs = {k: v for k, v in hyperparams.items() if k not in _ZOO_ONLY}
    for key in ("learning_rate", "clip_range"):
        if isinstance(kwargs.get(key), str) and kwargs[key].startswith("lin_"):
            kwargs[key] = linear_schedule(float(kwargs[key].removeprefix("lin_")))
    env = make_vec_env(env_id, n_envs=hyperparams.get("n_envs", 1), seed=seed)
    # The Zoo's device is "auto"; the platform's jobs train on the CPU here, and SB3 itself
    # recommends the CPU for small MLP policies.
    return ALGOS[algo](env=env, seed=seed, device="cpu", verbose=0, **kwargs)


class GreedyStop(BaseCallback):
    """Every `every` env steps: one progress line, the greedy evaluation behind the gate, stop at target."""

    def __init__(self, args: argparse.Namespace, started: float):
        super().__init__()
        self.args = args
        self.started = started
        self.next_check = args.eval_every
        self.iteration = 0
        self.solved = False

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_check:
            return True
        while self.next_check <= self.num_timesteps:
            self.next_check += self.args.eval_every
        self.iteration += 1
        episodes = self.model.ep_info_buffer
        train_return = float(np.mean([e["r"] for e in episodes])) if episodes else float("-inf")
        line = f"sb3: iteration {self.iteration}: {self.num_timesteps} env steps, return {train_return:.1f}"
        if train_return >= self.args.min_episode_return:
            act = lambda obs: self.model.predict(obs, deterministic=True)[0]
            evaluation = evaluate_greedy(act, self.args.env, self.args.episodes, self.args.eval_seed)
            line += f", greedy {evaluation.mean:.1f}"
            self.solved = evaluation.mean >= self.args.target
        print(line + f" ({time.monotonic() - self.started:.1f}s)", flush=True)
        return not self.solved


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    hyperparams = json.loads(args.hyperparams)
    model = build(args.algo, args.env, hyperparams, args.seed)
    stop = GreedyStop(args, started)
    model.learn(int(hyperparams["n_timesteps"]), callback=stop)
    if not stop.solved:
        print(f"sb3: not solved within the Zoo's n_timesteps ({model.num_timesteps} env steps)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
