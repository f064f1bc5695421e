"""Where an RLlib iteration's time goes: the platform's RL spec, built as the job builds it,
trained for a while in this process, with RLlib's own timers and a cProfile of the iterations.

    .venv/bin/python bench/rl_profile.py [jobs/specs/cartpole_dqn.yaml] [--warmup 3] [--iterations 10]
                                        [--set training.lr=0.001 ...]

No MLflow, no checkpoints, no evaluation: only `algo.train()` (on a local Ray of 2 CPUs, as
the job starts one). After --warmup iterations (learning must have started for DQN:
num_steps_sampled_before_learning_starts), --iterations more run under cProfile. Prints:

- env steps per second and seconds per iteration over the profiled iterations;
- RLlib's timers of the last iteration (its result's "timers": sampling, replay buffer add and
  sample, learner update, weight sync), as seconds per iteration;
- the profile's own time (tottime) by where the code lives (gymnasium's envs, the EnvRunner
  and its connectors, the replay buffer, the learner's connectors, torch's forward/backward and
  optimizer, RLlib's metrics logging, the rest), and the 25 functions with most own time.

A measurement, exit code 0.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "platform"))

# Where a function's file lives -> the part of the iteration it belongs to (first match wins).
AREAS = (
    ("replay buffer", ("rllib/utils/replay_buffers/",)),
    ("learner connectors", ("rllib/connectors/learner/", "rllib/connectors/common/", "rllib/connectors/connector")),
    ("env-runner connectors", ("rllib/connectors/env_to_module/", "rllib/connectors/module_to_env/")),
    ("episodes", ("rllib/env/single_agent_episode", "rllib/env/utils/infinite_lookback_buffer")),
    ("metrics logging", ("rllib/utils/metrics/",)),
    ("learner (RLlib)", ("rllib/core/learner/", "rllib/algorithms/dqn/torch/", "rllib/algorithms/ppo/torch/")),
    ("RLModule (RLlib)", ("rllib/core/rl_module/", "rllib/algorithms/dqn/", "rllib/algorithms/ppo/")),
    ("env runner", ("rllib/env/",)),
    ("gymnasium envs", ("gymnasium/",)),
    ("torch", ("torch/",)),
    ("numpy / tree", ("numpy/", "tree/", "dm_tree")),
    ("other RLlib", ("rllib/",)),
    ("Ray", ("ray/",)),
)


def area_of(filename: str) -> str:
    for area, needles in AREAS:
        if any(n in filename for n in needles):
            return area
    return "python / other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", default=str(REPO / "jobs" / "specs" / "cartpole_dqn.yaml"))
    p.add_argument("--warmup", type=int, default=3, help="iterations before the profile (learning must have begun)")
    p.add_argument("--iterations", type=int, default=10, help="iterations profiled")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides, as the job takes")
    args = p.parse_args(argv)

    import ray

    from raymaas.kinds import get_kind
    from raymaas.rl.job import build_algo_config
    from raymaas.specs import load_spec

    spec = load_spec(get_kind("rl").load_spec_model(), Path(args.spec), tuple(args.set))
    config = build_algo_config(spec)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    algo = config.build_algo()
    print(f"built {spec.algo} on {spec.env} in {time.perf_counter() - started:.1f}s", flush=True)

    steps = 0
    for _ in range(args.warmup):
        result = algo.train()
        steps += int(result["env_runners"].get("num_env_steps_sampled", 0))
    print(f"warm-up: {args.warmup} iterations, {steps} env steps", flush=True)

    profile = cProfile.Profile()
    profiled_steps, t0 = 0, time.perf_counter()
    profile.enable()
    for _ in range(args.iterations):
        result = algo.train()
        profiled_steps += int(result["env_runners"].get("num_env_steps_sampled", 0))
    profile.disable()
    wall = time.perf_counter() - t0
    print(
        f"\nprofiled: {args.iterations} iterations, {profiled_steps} env steps in {wall:.1f}s "
        f"({profiled_steps / wall:.0f} env steps/s, {wall / args.iterations:.2f}s an iteration; under cProfile)"
    )
    learner = result.get("learners", {}).get("__all_modules__", {})
    updates = learner.get("num_module_steps_trained", None)
    print(
        f"return mean {result['env_runners'].get('episode_return_mean', float('nan')):.1f}; last learner stats: {updates}"
    )

    print("\nRLlib's timers (the last iteration's, seconds; a timer RLlib smooths is its moving mean):")
    for name, value in sorted(_flat(result.get("timers", {})).items()):
        print(f"  {name:<55} {value:8.4f}")

    stats = pstats.Stats(profile)
    by_area: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():
        by_area[area_of(filename)] += tottime
        total += tottime
    print(f"\nown time by where the code lives (of {total:.1f}s profiled):")
    for area, seconds in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"  {area:<24} {seconds:7.2f}s  {100 * seconds / total:5.1f}%")
    print("\nthe functions with most own time:")
    stats.sort_stats("tottime").print_stats(25)
    algo.stop()
    ray.shutdown()
    return 0


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (int, float)):
            out[key] = float(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
