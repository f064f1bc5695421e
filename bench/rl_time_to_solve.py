"""Time to solve CartPole-v1: our PPO and DQN specs against RLlib's tuned examples and SB3 with the Zoo's settings.

    .venv/bin/python bench/rl_time_to_solve.py [--seeds 0 1 2] [--only ppo] [--contestants ours sb3] [--budget-s 400]

Each contestant is a subprocess, timed from the moment it is started to the moment it prints
its first greedy evaluation (20 episodes, deterministic actions, the same evaluation for every
contestant: raymaas.modelcode.policy.evaluate_greedy) whose mean return is at least 475; the env
steps sampled by then are read from the same line. Every contestant evaluates at most once per
1000 env steps, and only while its training episodes' mean return (last 100 episodes) passes
our spec's evaluation gate (evaluation.min_episode_return).

- ours: jobs/specs/cartpole_ppo.yaml and jobs/specs/cartpole_dqn.yaml, run as the real job,
  `python -m jobs.rl SPEC --set seed=S`, on a fresh local Ray with RAYMAAS_HOME and the MLflow
  store in a temporary folder (the project's store is never touched);
- rllib: RLlib's tuned CartPole examples (rllib/tuned_examples/ppo/cartpole_ppo.py and
  dqn/cartpole_dqn.py of Ray's repository; the 2.60 wheel does not ship them) written as
  raymaas specs and run as the same job, with RLlib's defaults for everything they leave unset
  (PPO: 2 EnvRunner actors of 1 env each; DQN: sampling in the driver, 1 env);
- sb3: Stable-Baselines3 with the Zoo's CartPole-v1 entries (ZOO_CARTPOLE below) in one
  process, bench/peers/sb3_cartpole.py; needs the `bench` extra (make bench-deps).

Contestants run one after another (never two at once), PPO before DQN, seeds interleaved
(ours, rllib, sb3, ours, ...), so that a load that comes and goes on a shared machine hits all
alike. Prints each run's wall seconds and env steps, the median of each contestant over the
seeds, our wall time as a fraction of RLlib's (target: at most 1/3) and of SB3's (issue 19:
PPO at most 0.6, DQN at most 1.0 with every seed of ours within 2x our median). A run that has
not solved within --budget-s (or, for SB3, within the Zoo's n_timesteps) counts as the budget.
The exit code is 0 either way: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from processes import end_group

from raymaas.rl.job import EvaluationSpec

REPO = Path(__file__).resolve().parent.parent
TARGET_RETURN = 475.0
TARGET_RATIO = 1 / 3
# Issue 19: ours / SB3 median wall time, and our slowest seed / our median (DQN only).
SB3_TARGET_RATIO = {"ppo": 0.6, "dqn": 1.0}
SPREAD_TARGET = {"dqn": 2.0}
CONTESTANTS = {"ours": "raymaas spec", "rllib": "RLlib tuned example", "sb3": "SB3, Zoo settings"}
# One iteration of ours: the PPO spec's train batch, RLlib DQN's min_sample_timesteps_per_iteration.
ITERATION_ENV_STEPS = 1000
_ITERATION = re.compile(r"(?:raymaas|sb3): iteration \d+: (\d+) env steps, return \S+, greedy ([\d.]+)")

# RLlib's tuned examples, field for field; the evaluation section is the one all contestants share.
RLLIB_TUNED = {
    "ppo": {
        "algo": "ppo",
        "env_runners": {"num_env_runners": 2, "num_envs_per_env_runner": 1},
        "training": {"lr": 0.0003, "num_epochs": 6, "vf_loss_coeff": 0.01},
        "model": {"fcnet_hiddens": [32], "fcnet_activation": "linear", "vf_share_layers": True},
    },
    "dqn": {
        "algo": "dqn",
        "env_runners": {"num_env_runners": 0, "num_envs_per_env_runner": 1},
        "training": {
            "lr": 0.0005,
            "train_batch_size_per_learner": 32,
            "replay_buffer_config": {
                "type": "PrioritizedEpisodeReplayBuffer",
                "capacity": 50000,
                "alpha": 0.6,
                "beta": 0.4,
            },
            "n_step": [2, 5],
            "double_q": True,
            "dueling": True,
            "epsilon": [[0, 1.0], [10000, 0.02]],
        },
        "model": {
            "fcnet_hiddens": [256],
            "fcnet_activation": "tanh",
            "fcnet_bias_initializer": "zeros_",
            "head_fcnet_bias_initializer": "zeros_",
            "head_fcnet_hiddens": [256],
        },
    },
}


# The RL Baselines3 Zoo's CartPole-v1 entries, field for field: rl_zoo3 2.9.2 (PyPI),
# rl_zoo3/hyperparams/ppo.yml and rl_zoo3/hyperparams/dqn.yml (hyperparams/ in
# github.com/DLR-RM/rl-baselines3-zoo). dqn.yml sets no n_envs (the Zoo's default: 1) and neither
# sets normalize; "lin_X" is the Zoo's linear schedule from X to 0 over n_timesteps.
ZOO_CARTPOLE = {
    "ppo": {
        "n_envs": 8,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": "lin_0.001",
        "clip_range": "lin_0.2",
    },
    "dqn": {
        "n_timesteps": 50_000,
        "policy": "MlpPolicy",
        "learning_rate": 2.3e-3,
        "batch_size": 64,
        "buffer_size": 100_000,
        "learning_starts": 1000,
        "gamma": 0.99,
        "target_update_interval": 10,
        "train_freq": 256,
        "gradient_steps": 128,
        "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
}


@dataclass
class Solve:
    wall_s: float
    env_steps: int | None  # None: not solved within the budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds; medians are over these")
    p.add_argument("--only", choices=["ppo", "dqn"], help="one algorithm only")
    p.add_argument(
        "--contestants",
        nargs="+",
        choices=list(CONTESTANTS),
        default=list(CONTESTANTS),
        help="who runs (ours always does: every ratio is ours over a peer)",
    )
    p.add_argument("--budget-s", type=float, default=400, help="give up on a run after this many wall seconds")
    return p.parse_args(argv)


def contestant_commands(folder: Path, algo: str) -> dict[str, Callable[[int], list[str]]]:
    """Each contestant's command line for algo, by seed; all use our spec's evaluation section."""
    ours = yaml.safe_load((REPO / "jobs" / "specs" / f"cartpole_{algo}.yaml").read_text())
    ev = EvaluationSpec.model_validate(ours.get("evaluation", {}))
    specs = contestant_specs(folder, algo, ours)
    sb3 = ["bench/peers/sb3_cartpole.py", algo, "--hyperparams", json.dumps(ZOO_CARTPOLE[algo])]
    sb3 += ["--env", "CartPole-v1", "--eval-every", str(ITERATION_ENV_STEPS * ev.interval)]
    sb3 += ["--episodes", str(ev.episodes), "--eval-seed", str(ev.seed)]
    sb3 += ["--min-episode-return", str(ev.min_episode_return), "--target", str(TARGET_RETURN)]
    return {
        "ours": lambda seed: ["-m", "jobs.rl", str(specs["ours"]), "--set", f"seed={seed}"],
        "rllib": lambda seed: ["-m", "jobs.rl", str(specs["rllib"]), "--set", f"seed={seed}"],
        "sb3": lambda seed: [*sb3, "--seed", str(seed)],
    }


def contestant_specs(folder: Path, algo: str, ours: dict) -> dict[str, Path]:
    """{'ours': spec path, 'rllib': spec path} for algo; both share our evaluation section."""
    rllib = {
        "name": f"bench-rllib-{algo}",
        "env": "CartPole-v1",
        **RLLIB_TUNED[algo],
        "evaluation": ours.get("evaluation", {}),
        "checkpoint_config": ours.get("checkpoint_config", {}),
    }
    ours["name"] = f"bench-ours-{algo}"
    paths = {}
    for who, spec in (("ours", ours), ("rllib", rllib)):
        spec["stop"] = {"target_return": TARGET_RETURN, "max_env_steps": 10_000_000, "max_seconds": 100_000}
        paths[who] = folder / f"{who}_{algo}.yaml"
        paths[who].write_text(yaml.safe_dump(spec, sort_keys=False))
    return paths


def time_to_solve(args: list[str], home: Path, budget_s: float) -> Solve:
    """Wall seconds from starting `python ARGS` to its first greedy evaluation >= TARGET_RETURN."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAYMAAS_HOME"] = str(home)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # the contestant, its local Ray and Ray's workers: one process group
    )
    timer = threading.Timer(budget_s, proc.kill)
    timer.start()
    solved: Solve | None = None
    tail: list[str] = []
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            match = _ITERATION.match(line)
            if match and float(match.group(2)) >= TARGET_RETURN:
                solved = Solve(time.monotonic() - started, int(match.group(1)))
                break
    finally:
        # Once solved the job only publishes, which is not part of the measurement. The whole
        # group goes, and the next contestant starts only once it is gone: Ray processes still
        # exiting would take CPU from its start-up.
        timer.cancel()
        end_group(proc)
    if solved is None:
        print(
            f"    did not solve within {budget_s:g}s or its own budget; last output:\n" + "".join(tail[-5:]), flush=True
        )
        return Solve(budget_s, None)
    return solved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    algos = [args.only] if args.only else ["ppo", "dqn"]
    who_runs = ["ours", *(who for who in CONTESTANTS if who != "ours" and who in args.contestants)]
    results: dict[tuple[str, str], list[Solve]] = {}
    with tempfile.TemporaryDirectory(prefix="raymaas-bench-rl-") as tmp:
        tmp = Path(tmp)
        for algo in algos:
            commands = contestant_commands(tmp, algo)
            for seed in args.seeds:
                for who in who_runs:
                    home = tmp / f"home-{who}-{algo}-{seed}"
                    home.mkdir()
                    solve = time_to_solve(commands[who](seed), home, args.budget_s)
                    shutil.rmtree(home, ignore_errors=True)
                    results.setdefault((algo, who), []).append(solve)
                    steps = solve.env_steps if solve.env_steps is not None else "unsolved"
                    print(f"  {algo} {who:5s} seed {seed}: {solve.wall_s:6.1f} s, {steps} env steps", flush=True)

    print(
        f"\ntime to a greedy 20-episode mean >= {TARGET_RETURN:g} on CartPole-v1, from process start "
        f"(median of {len(args.seeds)} seeds; {os.cpu_count()} CPUs)"
    )
    print(f"{'algo':5s} {'contestant':22s} {'wall s':>8s} {'env steps':>10s}  per seed (s, env steps)")
    for algo in algos:
        medians = {}
        for who in who_runs:
            runs = results[(algo, who)]
            wall = statistics.median(r.wall_s for r in runs)
            solved_steps = [r.env_steps for r in runs if r.env_steps is not None]
            steps = (
                f"{statistics.median(solved_steps):.0f}"
                if len(solved_steps) == len(runs)
                else f"{len(solved_steps)}/{len(runs)} solved"
            )
            per_seed = ", ".join(
                f"{r.wall_s:.1f} {r.env_steps if r.env_steps is not None else 'unsolved'}" for r in runs
            )
            medians[who] = wall
            print(f"{algo:5s} {CONTESTANTS[who]:22s} {wall:8.1f} {steps:>10s}  {per_seed}")
        for peer, target in (("rllib", TARGET_RATIO), ("sb3", SB3_TARGET_RATIO[algo])):
            if peer not in medians:
                continue
            ratio = medians["ours"] / medians[peer]
            verdict = "meets" if ratio <= target else "misses"
            # An unsolved peer run counts as the budget, so its median is a lower bound.
            bound = "at most " if any(r.env_steps is None for r in results[(algo, peer)]) else ""
            print(f"{algo:5s} ours / {peer} wall time: {bound}{ratio:.2f} ({verdict} the target of {target:.2f})")
        if algo in SPREAD_TARGET:
            spread = max(r.wall_s for r in results[(algo, "ours")]) / medians["ours"]
            verdict = "meets" if spread <= SPREAD_TARGET[algo] else "misses"
            print(
                f"{algo:5s} ours slowest seed / ours median: {spread:.2f} "
                f"({verdict} the target of {SPREAD_TARGET[algo]:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
