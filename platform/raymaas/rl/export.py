"""An RLlib policy as a Ray-free network: the module's forward pass up to the action scores,
exported with torch.export behind the same pyfunc as supervised models, and the parity check
that guards its registration."""

from __future__ import annotations

import numpy as np

from raymaas.modelcode.policy import Act, action_mismatches

# Observations the exported policy must act on exactly as the RLlib module does.
PARITY_OBSERVATIONS = 2000


def greedy_actions(module, obs: np.ndarray) -> np.ndarray:
    """The RLlib module's own greedy actions (forward_inference, then the deterministic choice):
    the answer the parity check holds the exported policy to."""
    import torch
    from ray.rllib.core.columns import Columns

    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)})
    if Columns.ACTIONS in out:  # DQN picks its greedy action itself
        return out[Columns.ACTIONS].cpu().numpy().astype(np.int64)
    return out[Columns.ACTION_DIST_INPUTS].argmax(-1).cpu().numpy().astype(np.int64)


def scored_greedy(network) -> Act:
    """The greedy actions of an action-score network (action_scores_network): the argmax of its
    scores, as the exported policy answers. The evaluations' policy: half the time of RLlib's
    forward_inference for the evaluation's 20 observations a step (RLlib's inference wrapper
    costs more than the network there)."""
    import torch

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).cpu().numpy().astype(np.int64)

    return act


def not_exportable(model_config: dict) -> str | None:
    """What a module of model_config (RLlib's, DQN's training fields included) is that
    action_scores_network cannot export; None: it can."""
    atoms = model_config.get("num_atoms")
    if isinstance(atoms, int) and atoms > 1:
        return f"a distributional DQN (num_atoms {atoms})"
    if model_config.get("use_lstm"):
        return "a recurrent policy (use_lstm)"
    return None


def action_scores_network(module):
    """A torch module mapping observations to the scores whose argmax is the greedy action
    (PPO: action logits; DQN: Q-values), built from the RLlib module's own forward code, so
    torch.export traces exactly what RLlib computes into a program with no RLlib in it."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import QNetAPI
    from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

    # RLlib's default inference is `_forward` under torch.no_grad(), which the exported program
    # would keep: no gradients, so no Integrated Gradients explanations of the policy. Where the
    # module keeps that default, its `_forward` is called directly (the same numbers; the
    # parity check holds them to it); a module with inference logic of its own keeps it.
    default_inference = type(module)._forward_inference is TorchRLModule._forward_inference

    class ActionScores(torch.nn.Module):
        def __init__(self, rl_module):
            super().__init__()
            self.rl_module = rl_module

        def forward(self, obs):
            batch = {Columns.OBS: obs}
            if isinstance(self.rl_module, QNetAPI):
                return self.rl_module.compute_q_values(batch)["qf_preds"]
            if default_inference:
                return self.rl_module._forward(batch)[Columns.ACTION_DIST_INPUTS]
            return self.rl_module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]

    if (unsupported := not_exportable(module.model_config)) is not None:
        raise NotImplementedError(f"exporting {unsupported} is not supported")
    return ActionScores(module)


class PolicyExportError(RuntimeError):
    """The exported policy does not act as the RLlib module does."""


def check_parity(expected: Act, exported: Act, obs: np.ndarray) -> None:
    """Raise PolicyExportError unless both policies pick the same action on every observation."""
    mismatches = action_mismatches(expected(obs), exported(obs))
    if len(mismatches):
        raise PolicyExportError(
            f"the exported policy differs from the RLlib module on {len(mismatches)} of {len(obs)} "
            f"observations (first: {obs[mismatches[0]].tolist()}); not registered"
        )
