"""Time to solve CartPole-v1: the platform's PPO and DQN specs against RLlib's own tuned examples.

    .venv/bin/python bench/rl_time_to_solve.py [--seeds 0 1 2] [--only ppo] [--budget-s 400]

Each contestant is the real job, `python -m jobs.rl SPEC --set seed=S`, as a subprocess on a
fresh local Ray with RAYMAAS_HOME and the MLflow store in a temporary folder (the project's
store is never touched). The clock starts when the process is started and stops when the job
prints its first greedy evaluation (20 episodes, the same evaluation for every contestant) whose
mean return is at least 475; the env steps sampled by then are read from the same line.

- ours: jobs/specs/cartpole_ppo.yaml and jobs/specs/cartpole_dqn.yaml;
- rllib: RLlib's tuned CartPole examples (rllib/tuned_examples/ppo/cartpole_ppo.py and
  dqn/cartpole_dqn.py of Ray's repository; the 2.60 wheel does not ship them) written as
  raymaas specs, with RLlib's defaults for everything they leave unset (PPO: 2 EnvRunner
  actors of 1 env each; DQN: sampling in the driver, 1 env).

Contestants run one after another (never two at once), PPO before DQN, seeds interleaved
(ours, rllib, ours, rllib, ...), so that a load that comes and goes on a shared machine hits
both alike. Prints the median wall seconds and env steps of each over the seeds, and our
wall time as a fraction of RLlib's (target: at most 1/3). A run that has not solved within
--budget-s counts as the budget. The exit code is 0 either way: this is a measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from processes import end_group

REPO = Path(__file__).resolve().parent.parent
TARGET_RETURN = 475.0
TARGET_RATIO = 1 / 3
_ITERATION = re.compile(r"raymaas: iteration \d+: (\d+) env steps, return \S+, greedy ([\d.]+)")

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


@dataclass
class Solve:
    wall_s: float
    env_steps: int | None  # None: not solved within the budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds; medians are over these")
    p.add_argument("--only", choices=["ppo", "dqn"], help="one algorithm only")
    p.add_argument("--budget-s", type=float, default=400, help="give up on a run after this many wall seconds")
    return p.parse_args(argv)


def contestant_specs(folder: Path, algo: str) -> dict[str, Path]:
    """{'ours': spec path, 'rllib': spec path} for algo; both share our evaluation section."""
    ours = yaml.safe_load((REPO / "jobs" / "specs" / f"cartpole_{algo}.yaml").read_text())
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


def time_to_solve(spec: Path, seed: int, home: Path, budget_s: float) -> Solve:
    """Wall seconds from process start to the first greedy evaluation >= TARGET_RETURN."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAYMAAS_HOME"] = str(home)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.rl", str(spec), "--set", f"seed={seed}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # the job, its local Ray and Ray's workers: one process group
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
        print(f"    did not solve within {budget_s:g}s; last output:\n" + "".join(tail[-5:]), flush=True)
        return Solve(budget_s, None)
    return solved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    algos = [args.only] if args.only else ["ppo", "dqn"]
    results: dict[tuple[str, str], list[Solve]] = {}
    with tempfile.TemporaryDirectory(prefix="raymaas-bench-rl-") as tmp:
        tmp = Path(tmp)
        for algo in algos:
            specs = contestant_specs(tmp, algo)
            for seed in args.seeds:
                for who in ("ours", "rllib"):
                    home = tmp / f"home-{who}-{algo}-{seed}"
                    home.mkdir()
                    solve = time_to_solve(specs[who], seed, home, args.budget_s)
                    shutil.rmtree(home, ignore_errors=True)
                    results.setdefault((algo, who), []).append(solve)
                    steps = solve.env_steps if solve.env_steps is not None else "unsolved"
                    print(f"  {algo} {who:5s} seed {seed}: {solve.wall_s:6.1f} s, {steps} env steps", flush=True)

    print(
        f"\ntime to a greedy 20-episode mean >= {TARGET_RETURN:g} on CartPole-v1, from process start "
        f"(median of {len(args.seeds)} seeds; {os.cpu_count()} CPUs)"
    )
    print(f"{'algo':5s} {'contestant':22s} {'wall s':>8s} {'env steps':>10s}")
    for algo in algos:
        medians = {}
        for who, label in (("ours", "raymaas spec"), ("rllib", "RLlib tuned example")):
            runs = results[(algo, who)]
            wall = statistics.median(r.wall_s for r in runs)
            solved_steps = [r.env_steps for r in runs if r.env_steps is not None]
            steps = (
                f"{statistics.median(solved_steps):.0f}"
                if len(solved_steps) == len(runs)
                else f"{len(solved_steps)}/{len(runs)} solved"
            )
            medians[who] = wall
            print(f"{algo:5s} {label:22s} {wall:8.1f} {steps:>10s}")
        ratio = medians["ours"] / medians["rllib"]
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        # An unsolved RLlib run counts as the budget, so its median is a lower bound.
        bound = "at most " if any(r.env_steps is None for r in results[(algo, "rllib")]) else ""
        print(f"{algo:5s} ours / RLlib wall time: {bound}{ratio:.2f} ({verdict} the target of {TARGET_RATIO:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
