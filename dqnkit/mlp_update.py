"""DQN's update for a plain MLP on the CPU, with its backward pass written out.

At CleanRL's CartPole settings (a 4-120-84-2 MLP, batch 128) the eager update costs ~560 µs,
and the arithmetic is a small part of it: each of the ~60 operations pays for module
dispatch, autograd's graph and its engine (issue 18). For the plain network (Linear and ReLU
layers, the scalar ``none`` head) the backward is a dozen known operations, so
:class:`MLPUpdate` runs them directly: about half the time.

The result is bit-identical to the autograd update, because it calls the same ATen kernels
that autograd's backward formulas call (``mse_loss_backward``, ``threshold_backward``, the
``mm`` pairs of ``addmm``'s backward, the ``scatter_add_`` of ``gather``'s), in the same
order, and hands the gradients to the same clipping and the same fused Adam step. A test
checks it per loss, with Double DQN, n-step discounts, IS weights and clipping.

Anything it cannot see through falls back to autograd: another network, noisy or dueling
layers, LayerNorm, a distributional head, a device other than the CPU, and any hook a user
registered on a module or a parameter.

Shape legend: B batch, A actions, H a layer's width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from dqnkit.config import Config
from dqnkit.heads import ELEMENTWISE_LOSS, discounts, td_targets
from dqnkit.networks import MLP

if TYPE_CHECKING:
    from dqnkit.replay.uniform import Batch

aten = torch.ops.aten
_NO_REDUCTION = 0  # torch's Reduction::None, as autograd passes it to the loss backwards


def plain_layers(net: nn.Module) -> list[nn.Linear] | None:
    """``net``'s Linear layers in order if it is exactly Linear, ReLU, ..., Linear (an
    :class:`MLP` without dueling, noisy, LayerNorm or atoms), else None."""
    if type(net) is not MLP or net.head.atoms != 1:
        return None
    leaves = [m for m in net.modules() if not list(m.children())]
    kinds = [type(m) for m in leaves]
    if kinds != [nn.Linear, nn.ReLU] * (len(leaves) // 2) + [nn.Linear]:
        return None
    return [m for m in leaves if isinstance(m, nn.Linear)]


def hooked(modules: list[nn.Module], params: list[nn.Parameter]) -> bool:
    """Whether a user hook on one of ``modules`` or ``params`` (or a global module hook)
    would be skipped by the update below."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
    return any(p._backward_hooks or p._post_accumulate_grad_hooks for p in params)


class MLPUpdate:
    """The loss and gradients of :meth:`DQNAgent._step` for a plain MLP, without autograd."""

    def __init__(self, q_net: nn.Module, target_net: nn.Module, config: Config) -> None:
        online, target = plain_layers(q_net), plain_layers(target_net)
        if not (online and target):
            raise ValueError("MLPUpdate needs two plain MLPs (see plain_layers)")
        self.online = [Layer.of(m) for m in online]
        self.target = [Layer.of(m) for m in target]
        self._online_params = [p for m in online for p in (m.weight, m.bias)]
        self.config = config
        # what the hook check looks at, listed once: walking the module tree costs ~10 µs
        self._modules = [*q_net.modules(), *target_net.modules()]
        self._params = [*q_net.parameters(), *target_net.parameters()]

    def applies(self) -> bool:
        """False while a hook is registered that this update would skip."""
        return not hooked(self._modules, self._params)

    def gradients(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Set each online parameter's ``.grad`` as ``loss.backward()`` would for ``batch``
        (device tensors); returns (loss, priority [B], Q(s, a) [B])."""
        # Every tensor here is detached (the layers hold detached views of the parameters),
        # so no operation records a graph, without a no_grad block.
        cfg = self.config
        obs_BD, next_obs_BD = batch.obs.flatten(1).float(), batch.next_obs.flatten(1).float()
        next_online = forward(self.online, next_obs_BD)[-1] if cfg.double else None
        next_target = forward(self.target, next_obs_BD)[-1]
        discounts_B = discounts(cfg.gamma, batch.horizons)
        target_B = td_targets(batch.rewards, batch.terminated, discounts_B, next_target, next_online)
        activations = forward(self.online, obs_BD)  # [obs, h1, ..., out]
        actions_B1 = batch.actions.unsqueeze(1)
        q_B = activations[-1].gather(1, actions_B1).squeeze(1)
        loss = (batch.weights * ELEMENTWISE_LOSS[cfg.loss](q_B, target_B, reduction="none")).mean()

        # backward, formula by formula as autograd runs it: mean, the IS weights' mul, the
        # loss, gather (the seed gradient is ones_like(loss))
        grad_B = torch.ones_like(loss).expand(len(q_B)) / len(q_B)
        grad_B = _LOSS_BACKWARD[cfg.loss](grad_B * batch.weights, q_B, target_B)
        grad_out = torch.zeros_like(activations[-1]).scatter_add_(1, actions_B1, grad_B.unsqueeze(1))
        for param, grad in zip(self._online_params, backward(self.online, activations, grad_out)):
            param.grad = grad
        return loss, (q_B - target_B).abs(), q_B


class Layer(NamedTuple):
    """A Linear layer's parameters as detached views: they follow every in-place update
    (Adam's step, ``load_state_dict``) without recording autograd graphs."""

    weight: torch.Tensor  # [H_out, H_in]
    weight_t: torch.Tensor  # its transpose, a view made once (a .t() per use costs ~1 µs)
    bias: torch.Tensor  # [H_out]

    @staticmethod
    def of(linear: nn.Linear) -> Layer:
        """The views of ``linear``'s parameters."""
        weight = linear.weight.detach()
        return Layer(weight, weight.t(), linear.bias.detach())


def forward(layers: list[Layer], x_BD: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output of ``Linear, ReLU, ..., Linear`` on ``x_BD``: [x, h1, ..., out].
    ``addmm(b, x, W^T)`` is what ``F.linear`` runs for a batch."""
    outs = [x_BD]
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        z = torch.addmm(layer.bias, outs[-1], layer.weight_t)
        outs.append(z if i == last else z.relu_())  # nothing reads z before its ReLU
    return outs


def backward(layers: list[Layer], activations: list[torch.Tensor], grad_out: torch.Tensor) -> list[torch.Tensor]:
    """(dW1, db1, ..., dWL, dbL) from the output's gradient [B, A]. Per layer, as autograd's
    ``addmm`` backward for ``F.linear`` computes it: ``dW = g^T x``, ``db = sum_B g``,
    ``dx = g W``; through each ReLU ``threshold_backward`` on its output."""
    grads: list[torch.Tensor] = []
    grad = grad_out
    for i in range(len(layers) - 1, -1, -1):
        x = activations[i]
        grads += [grad.sum(0), grad.t().mm(x)]
        if i:
            grad = aten.threshold_backward(grad.mm(layers[i].weight), x, 0)
    return grads[::-1]


_LOSS_BACKWARD = {
    "huber": lambda grad, q, target: aten.smooth_l1_loss_backward(grad, q, target, _NO_REDUCTION, 1.0),
    "mse": lambda grad, q, target: aten.mse_loss_backward(grad, q, target, _NO_REDUCTION),
}
