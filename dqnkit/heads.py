"""The loss heads of the one agent, and the only place a TD target is computed.

A head is two small pure functions, picked once from ``config.distributional`` (:data:`HEADS`):

- ``expected(out, support)``: the network's output -> Q [B, A], for acting, evaluation and
  the overestimation probe;
- ``loss(x)``: a batch's :class:`HeadInput` -> (per-sample loss, PER priority, Q(s, a)),
  each [B]; autograd differentiates the loss.

``none`` is DQN's scalar head (Huber or MSE to ``r + gamma^k Q_target(s', a*)``), ``c51``
the categorical distribution of Bellemare et al. 2017, ``qr`` the quantiles of Dabney et al.
2018. Double DQN is in every head's choice of ``a*``; only ``terminated`` stops a bootstrap.

Shape legend: B batch, A actions, K atoms or quantiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class HeadInput(NamedTuple):
    """What a head's loss reads; ``out`` carries gradients, the rest do not."""

    out: torch.Tensor  # q_net(obs): [B, A] or [B, A, K]
    next_target: torch.Tensor  # target_net(next_obs), same shape
    next_online: torch.Tensor | None  # q_net(next_obs) for Double DQN, else None
    actions_B: torch.Tensor
    rewards_B: torch.Tensor
    terminated_B: torch.Tensor
    discounts_B: torch.Tensor  # gamma ** k
    support_K: torch.Tensor  # c51's atoms
    loss: str  # none head: "huber" or "mse"
    qr_kappa: float


Losses = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per-sample loss, priority, Q(s, a): each [B]


class Head(NamedTuple):
    """A loss head: ``expected(out, support)`` -> Q [B, A], and ``loss(HeadInput)`` ->
    (per-sample loss, priority, Q(s, a)), each [B], ``x.out`` carrying the gradient."""

    expected: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: Callable[[HeadInput], Losses]


def batch_loss(per_sample_B: torch.Tensor, weights_B: torch.Tensor) -> torch.Tensor:
    """The loss an update minimises: each sample's loss scaled by its IS weight, averaged."""
    return (weights_B * per_sample_B).mean()


# ----------------------------------------------------------------------------- targets
def discounts(gamma: float, horizons_B: torch.Tensor) -> torch.Tensor:
    """``gamma ** k`` [B] for transitions that fold ``k`` rewards (n-step returns)."""
    return gamma ** horizons_B.float()


def next_actions(next_q_target_BA: torch.Tensor, next_q_online_BA: torch.Tensor | None = None) -> torch.Tensor:
    """``a*`` [B] for the bootstrap: argmax of the target network (DQN) or, for Double DQN
    (van Hasselt et al. 2016, https://arxiv.org/abs/1509.06461), of the online network, so
    that one network selects and the other evaluates."""
    return (next_q_target_BA if next_q_online_BA is None else next_q_online_BA).argmax(dim=1)


def bootstrap(
    rewards_B: torch.Tensor, terminated_B: torch.Tensor, discounts_B: torch.Tensor, next_values: torch.Tensor
) -> torch.Tensor:
    """``r + gamma^k * (1 - terminated) * v'`` for ``v'`` [B] (a value) or [B, K] (atoms or
    quantiles, each shifted alike). Only ``terminated`` stops bootstrapping: a truncated
    (time-limit) transition keeps its bootstrap term."""
    if next_values.dim() == 2:
        rewards_B, terminated_B, discounts_B = rewards_B[:, None], terminated_B[:, None], discounts_B[:, None]
    return rewards_B + discounts_B * (1.0 - terminated_B) * next_values


def td_targets(
    rewards_B: torch.Tensor,
    terminated_B: torch.Tensor,
    discounts_B: torch.Tensor,
    next_q_target_BA: torch.Tensor,
    next_q_online_BA: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DQN / Double DQN target ``r + gamma^k * (1 - terminated) * Q_target(s', a*)`` [B]."""
    best_B1 = next_actions(next_q_target_BA, next_q_online_BA).unsqueeze(1)
    return bootstrap(rewards_B, terminated_B, discounts_B, next_q_target_BA.gather(1, best_B1).squeeze(1))


def project_distribution(
    next_probs_BK: torch.Tensor, target_atoms_BK: torch.Tensor, support_K: torch.Tensor
) -> torch.Tensor:
    """C51's categorical projection (Bellemare et al. 2017, algorithm 1): the probability mass
    of each shifted atom ``target_atoms_BK`` (clipped to the support) is split between the two
    nearest atoms of ``support_K`` in proportion to closeness. Returns [B, K], rows sum to 1.

    Every index lies in [0, K-1] whatever the rounding: ``(z - v_min) / delta`` can come out
    a hair above K-1 in float32 (v_min -10, v_max 200, K 51 gives 50.000004), and a ceil of
    that indexes past the support (a CUDA device-side assert; an IndexError on the CPU). An
    atom equal to a support point keeps all its mass, even where that division is inexact.
    """
    v_min, v_max, k = support_K[0], support_K[-1], support_K.numel()
    delta = (v_max - v_min) / (k - 1)
    atoms_BK = target_atoms_BK.clamp(v_min, v_max)
    b = ((atoms_BK - v_min) / delta).clamp(0, k - 1)  # fractional atom index
    nearest = b.round().long()
    b = torch.where(atoms_BK == support_K[nearest], nearest.float(), b)
    lower = b.floor().long()
    upper = (lower + 1).clamp(max=k - 1)
    # lower's share is 1 - (b - lower); an integer b (lower == b) puts all the mass on lower
    # and adds exactly 0 to upper, which keeps the sums bit-identical to the textbook split
    lower_weight = (lower + 1).float() - b
    upper_weight = b - lower.float()
    projected = torch.zeros_like(next_probs_BK)
    projected.scatter_add_(1, lower, next_probs_BK * lower_weight)
    projected.scatter_add_(1, upper, next_probs_BK * upper_weight)
    return projected


def quantile_huber_loss(quantiles_BK: torch.Tensor, targets_BK: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """QR-DQN's loss per sample [B] (Dabney et al. 2018, eq. 10): for quantile i at
    ``tau_i = (2i + 1) / 2K`` and every target sample j, ``|tau_i - 1{u_ij < 0}| * L_kappa(u_ij) / kappa``
    with ``u_ij = target_j - quantile_i``; summed over i, averaged over j."""
    k = quantiles_BK.shape[1]
    tau_K = (torch.arange(k, device=quantiles_BK.device, dtype=quantiles_BK.dtype) + 0.5) / k
    u_BKK = targets_BK[:, None, :] - quantiles_BK[:, :, None]  # [B, i, j]
    huber = F.huber_loss(u_BKK, torch.zeros_like(u_BKK), reduction="none", delta=kappa)
    weight = (tau_K[None, :, None] - (u_BKK.detach() < 0).float()).abs()
    return (weight * huber / kappa).mean(dim=2).sum(dim=1)


# ----------------------------------------------------------------------------- none (DQN)
def q_as_is(out_BA: torch.Tensor, support_K: torch.Tensor) -> torch.Tensor:
    """DQN's head outputs Q [B, A] already."""
    return out_BA


# the none head's loss per sample, ``f(q_B, target_B, reduction="none")``
_ELEMENTWISE_LOSS = {"huber": F.smooth_l1_loss, "mse": F.mse_loss}


def td_loss(x: HeadInput) -> Losses:
    """Huber or MSE to the (Double) DQN target; the priority is |TD error|."""
    with torch.no_grad():
        target_B = td_targets(x.rewards_B, x.terminated_B, x.discounts_B, x.next_target, x.next_online)
    q_B = x.out.gather(1, x.actions_B.unsqueeze(1)).squeeze(1)
    per_sample_B = _ELEMENTWISE_LOSS[x.loss](q_B, target_B, reduction="none")
    return per_sample_B, (q_B - target_B).detach().abs(), q_B


# ----------------------------------------------------------------------------- distributional
def c51_mean(out_BAK: torch.Tensor, support_K: torch.Tensor) -> torch.Tensor:
    """The mean of each action's categorical distribution over the support: Q [B, A]."""
    return (out_BAK.softmax(dim=2) * support_K).sum(dim=2)


def qr_mean(out_BAK: torch.Tensor, support_K: torch.Tensor) -> torch.Tensor:
    """The mean of each action's quantiles: Q [B, A]."""
    return out_BAK.mean(dim=2)


def _next_and_chosen(x: HeadInput, expected: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """(the target net's distribution at a* [B, K], the online one at the taken action [B, K])."""
    with torch.no_grad():
        online = None if x.next_online is None else expected(x.next_online, x.support_K)
        best = next_actions(expected(x.next_target, x.support_K), online)
        next_BK = x.next_target[torch.arange(len(best), device=best.device), best]
    chosen_BK = x.out[torch.arange(len(x.actions_B), device=x.actions_B.device), x.actions_B]
    return next_BK, chosen_BK


def c51_loss(x: HeadInput) -> Losses:
    """Cross-entropy to the projected target distribution; Rainbow's priority is that loss."""
    next_BK, chosen_BK = _next_and_chosen(x, c51_mean)
    with torch.no_grad():
        atoms_BK = bootstrap(x.rewards_B, x.terminated_B, x.discounts_B, x.support_K.expand_as(next_BK))
        target_BK = project_distribution(next_BK.softmax(dim=1), atoms_BK, x.support_K)
    log_p_BK = chosen_BK.log_softmax(dim=1)
    q_B = (log_p_BK.exp() * x.support_K).sum(dim=1)
    per_sample_B = -(target_BK * log_p_BK).sum(dim=1)
    return per_sample_B, per_sample_B.detach(), q_B


def qr_loss(x: HeadInput) -> Losses:
    """The quantile Huber loss to the shifted target quantiles; the priority is that loss."""
    next_BK, chosen_BK = _next_and_chosen(x, qr_mean)
    with torch.no_grad():
        target_BK = bootstrap(x.rewards_B, x.terminated_B, x.discounts_B, next_BK)
    per_sample_B = quantile_huber_loss(chosen_BK, target_BK, x.qr_kappa)
    return per_sample_B, per_sample_B.detach(), chosen_BK.mean(dim=1)


HEADS: dict[str, Head] = {
    "none": Head(q_as_is, td_loss),
    "c51": Head(c51_mean, c51_loss),
    "qr": Head(qr_mean, qr_loss),
}
