"""RLlib's DQN with its updates arranged for cheap environments: ready batches, one learner call.

RLlib's DQN training step (new API stack) samples the env runners, adds the episodes to the
replay buffer, then for each of its `training_intensity` updates samples one-step episodes from
the buffer and hands them to the learner, whose connector pipeline turns them back into a
train batch. On CartPole (bench/rl_profile.py) building those episodes and running the
connectors cost more than the forward and backward passes they feed.

`DQN` keeps RLlib's algorithm, loss, learner, target-network updates, env runners and metrics,
and changes one arrangement: where the replay buffer can build the train batch itself (a
`sample_batch` method, as raymaas.rl.replay.ColumnReplayBuffer has), the step samples all
of its updates' transitions at once and hands them to the learner as one batch, which the
learner splits into `train_batch_size_per_learner` minibatches: the same number of gradient
steps on the same kind of uniformly sampled n-step transitions, without episodes in between.
Any other buffer (prioritized replay, stateful modules, the old API stack) gets RLlib's step.
Raymaas RL specs with `algo: dqn` build this class (raymaas.rl.job.build_algo_config).
"""

from __future__ import annotations

from ray.rllib.algorithms.dqn.dqn import DQN as RLlibDQN
from ray.rllib.algorithms.dqn.dqn import calculate_rr_weights
from ray.rllib.core import ALL_MODULES, DEFAULT_MODULE_ID
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_RESULTS,
    REPLAY_BUFFER_SAMPLE_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TD_ERROR_KEY,
    TIMERS,
)


def builds_batches(buffer) -> bool:
    """Whether a replay buffer samples ready train batches (raymaas.rl.replay)."""
    return callable(getattr(buffer, "sample_batch", None))


class DQN(RLlibDQN):
    """RLlib's DQN; with a buffer that builds train batches, each training step's updates are
    one learner call on a ready batch (see the module's docstring)."""

    def training_step(self) -> None:
        if (
            not self.config.enable_env_runner_and_connector_v2
            or self._module_is_stateful
            or not builds_batches(self.local_replay_buffer)
        ):
            return super().training_step()
        # Sampling and adding as RLlib's DQN._training_step_new_api_stack does (ray 2.60.0,
        # ray/rllib/algorithms/dqn/dqn.py); compare with it when Ray is upgraded.
        store_weight, train_weight = calculate_rr_weights(self.config)
        for _ in range(store_weight):
            with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
                episodes, env_runner_results = synchronous_parallel_sample(
                    worker_set=self.env_runner_group,
                    concat=True,
                    sample_timeout_s=self.config.sample_timeout_s,
                    _uses_new_env_runners=True,
                    _return_metrics=True,
                )
            self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
            with self.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
                self.local_replay_buffer.add(episodes)

        # RLlib's step counts agent steps where count_steps_by says so: the same number for the
        # single-agent episodes a buffer with sample_batch stores.
        sampled = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        # The buffer too: a job restored from a checkpoint counts its steps from before, but its
        # buffer (not checkpointed) starts empty and is filled again before learning resumes.
        starts = self.config.num_steps_sampled_before_learning_starts
        if sampled < starts or len(self.local_replay_buffer) < min(starts, self.local_replay_buffer.capacity):
            return
        # Rows for train_weight updates; several learners would each get an equal share of the
        # batch and split it into minibatches of their own size.
        minibatch = self.config.train_batch_size_per_learner
        rows = self.config.total_train_batch_size * train_weight
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
            columns = self.local_replay_buffer.sample_batch(rows, n_step=self.config.n_step, gamma=self.config.gamma)
            self.metrics.aggregate([self.local_replay_buffer.get_metrics()], key=REPLAY_BUFFER_RESULTS)
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=rows),
                minibatch_size=minibatch,
                num_epochs=1,
                shuffle_batch_per_epoch=False,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: sampled,
                    NUM_AGENT_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default=0
                    ),
                },
            )
            # Per-transition TD errors are for a prioritized buffer's priorities, not for the
            # results (RLlib's own step drops them too); this buffer samples uniformly.
            for result in learner_results:
                for module_results in result.values():
                    module_results.pop(TD_ERROR_KEY, None)
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=set(learner_results[0].keys()) - {ALL_MODULES},
                global_vars=None,
                inference_only=True,
            )
