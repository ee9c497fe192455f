"""DQN's CPU update with its backward pass written out, for the networks dqnkit builds.

An eager update runs some sixty operations, and on the CPU each pays for module dispatch,
autograd's graph and engine, and the optimizer's Python. At CleanRL's CartPole settings (a
4-120-84-2 MLP, batch 128) that is ~600 µs per update of which the matmuls are ~150 (issue
18). For a network of Linear, Conv2d and ReLU layers (:class:`MLP`, :class:`MinAtarCNN`,
:class:`NatureCNN`; plain, noisy or dueling), the backward is a dozen known operations, and each
loss head writes its own out (:mod:`dqnkit.heads`), so :class:`DirectUpdate` runs them
directly: 1.35-1.55x faster per update there (`dqnkit bench speed` times it).

The result is bit-identical to the autograd update, because it calls the same ATen kernels
that autograd's backward formulas call (the heads': ``mse_loss_backward``,
``_log_softmax_backward_data``, ``huber_loss_backward``, ``gather``'s ``scatter_add_``,
indexing's ``index_put``; the network's: the ``mm`` pair of ``addmm``'s backward,
``convolution_backward``, ``threshold_backward``, the dueling head's sums), in the same
order, and hands the gradients to the same clipping and the same fused Adam step. A test
checks it per head, loss and network, with Double DQN, the dueling head, n-step discounts,
IS weights and clipping.

Anything it cannot see through falls back to autograd: another network, LayerNorm, a
device other than the CPU, and any hook a user registered on a module or a
parameter.

Shape legend: B batch, A actions, H a layer's output (features, or channels x height x width).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from dqnkit.config import Config
from dqnkit.heads import Head, HeadInput, batch_loss, batch_loss_backward
from dqnkit.networks import MLP, DuelingHead, MinAtarCNN, NatureCNN, NoisyLinear

if TYPE_CHECKING:
    from collections.abc import Callable

    from dqnkit.replay.uniform import Batch

    HeadInputOf = Callable[[Batch, torch.Tensor, torch.Tensor, torch.Tensor | None], HeadInput]

aten = torch.ops.aten
# a layer's backward: each of its parameters with its gradient, and dx where asked for
Grads = tuple[list[tuple[nn.Parameter, torch.Tensor | None]], torch.Tensor | None]


class Dense(NamedTuple):
    """A Linear layer's parameters as detached views: they follow every in-place update
    (Adam's step, ``load_state_dict``) without recording autograd graphs."""

    weight: torch.Tensor  # [H_out, H_in]
    weight_t: torch.Tensor  # its transpose, a view made once (a .t() per use costs ~1 µs)
    bias: torch.Tensor
    module: nn.Module  # whose .weight and .bias get the gradients

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` as it runs for a batch: ``addmm(b, x, W^T)``."""
        return torch.addmm(self.bias, x, self.weight_t)

    def backward(self, grad: torch.Tensor, x: torch.Tensor, needs_input: bool) -> Grads:
        """``addmm``'s backward for ``F.linear``: ``dW = g^T x``, ``db = sum_B g``, ``dx = g W``."""
        grads = [(self.module.weight, grad.t().mm(x)), (self.module.bias, grad.sum(0))]
        return grads, grad.mm(self.weight) if needs_input else None


class NoisyDense(NamedTuple):
    """A :class:`NoisyLinear` layer: its parameters and noise buffers as detached views (the
    agent redraws the noise in place before each update)."""

    weight_mu: torch.Tensor
    weight_sigma: torch.Tensor
    bias_mu: torch.Tensor
    bias_sigma: torch.Tensor
    eps_in: torch.Tensor
    eps_out: torch.Tensor
    module: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`NoisyLinear.forward`'s arithmetic."""
        weight, bias, _ = self._noisy()
        return torch.addmm(bias, x, weight.t())

    def backward(self, grad: torch.Tensor, x: torch.Tensor, needs_input: bool) -> Grads:
        """The weight's and bias's gradients as for :class:`Dense`, then through ``mu + sigma
        * noise``: ``dmu = dW``, ``dsigma = dW * noise`` (the noise recomputed, the same values)."""
        weight, _, noise = self._noisy()
        m = self.module
        grad_weight, grad_bias = grad.t().mm(x), grad.sum(0)
        if not m.training:  # the mean weights alone; sigma has no gradient, as with autograd
            grads = [(m.weight_mu, grad_weight), (m.weight_sigma, None), (m.bias_mu, grad_bias), (m.bias_sigma, None)]
        else:
            grads = [
                (m.weight_mu, grad_weight),
                (m.weight_sigma, grad_weight * noise),
                (m.bias_mu, grad_bias),
                (m.bias_sigma, grad_bias * self.eps_out),
            ]
        return grads, grad.mm(weight) if needs_input else None

    def _noisy(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(weight, bias, the weight's factorised noise) as the module computes them."""
        if not self.module.training:
            return self.weight_mu, self.bias_mu, None
        noise = torch.outer(self.eps_out, self.eps_in)
        return self.weight_mu + self.weight_sigma * noise, self.bias_mu + self.bias_sigma * self.eps_out, noise


class Conv(NamedTuple):
    """A zero-padded Conv2d layer's parameters as detached views, and its geometry."""

    weight: torch.Tensor  # [C_out, C_in, kH, kW]
    bias: torch.Tensor
    module: nn.Module
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """What ``nn.Conv2d`` runs (zero padding): ``torch.conv2d``."""
        return torch.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, grad: torch.Tensor, x: torch.Tensor, needs_input: bool) -> Grads:
        """``convolution_backward``, with the output mask autograd passes."""
        dx, dw, db = aten.convolution_backward(
            grad,
            x,
            self.weight,
            [self.bias.shape[0]],
            self.stride,
            self.padding,
            self.dilation,
            False,
            [0] * len(self.stride),
            self.groups,
            [needs_input, True, True],
        )
        return [(self.module.weight, dw), (self.module.bias, db)], dx


Layer = Dense | NoisyDense | Conv


def _layer(m: nn.Module) -> Layer | None:
    """``m`` as a :class:`Dense`, :class:`NoisyDense` or :class:`Conv`, or None where it is
    another module."""
    if type(m) is nn.Linear and m.bias is not None:
        weight = m.weight.detach()
        return Dense(weight, weight.t(), m.bias.detach(), m)
    if type(m) is NoisyLinear:
        tensors = (m.weight_mu, m.weight_sigma, m.bias_mu, m.bias_sigma, m.eps_in, m.eps_out)
        return NoisyDense(*(t.detach() for t in tensors), m)
    if type(m) is nn.Conv2d and m.bias is not None and m.padding_mode == "zeros" and isinstance(m.padding, tuple):
        return Conv(m.weight.detach(), m.bias.detach(), m, m.stride, m.padding, m.dilation, m.groups)
    return None


class Plan(NamedTuple):
    """A network seen as plain layers: ``prepare`` (the network's own input conversion),
    ``body`` (each layer followed by a ReLU; ``flatten``: then a Flatten), then ``head``,
    layers with a ReLU between each two, which outputs Q [B, A], or, with a dueling head, V
    [B, 1] beside ``advantage`` (the same form) [B, A], and Q = V + A - mean(A)."""

    prepare: Callable[[torch.Tensor], torch.Tensor]
    body: list[Layer]
    flatten: bool
    head: list[Layer]
    advantage: list[Layer] | None
    n_actions: int
    atoms: int  # K > 1: the output is [B, A, K] (a view of [B, A * K], as in the network)

    @staticmethod
    def of(net: nn.Module) -> Plan | None:
        """``net``'s plan if it is one of dqnkit's networks built of Linear, Conv2d and ReLU
        layers (plain, noisy or dueling, any head; not LayerNorm), else None."""
        if type(net) not in (MLP, MinAtarCNN, NatureCNN):
            return None
        modules = list(net.body)
        flatten = bool(modules) and type(modules[-1]) is nn.Flatten
        body = _chain(modules[:-1] if flatten else modules, relu_last=True)
        head = net.head.net
        branches = [head.value, head.advantage] if type(head) is DuelingHead else [head]
        chains = [_chain(list(b) if type(b) is nn.Sequential else [b], relu_last=False) for b in branches]
        if body is None or None in chains:
            return None
        advantage = chains[1] if len(chains) == 2 else None
        return Plan(net.prepare, body, flatten, chains[0], advantage, net.head.n_actions, net.head.atoms)


def _chain(modules: list[nn.Module], relu_last: bool) -> list[Layer] | None:
    """The layers of ``layer, ReLU, ..., layer`` (``relu_last``: ``..., layer, ReLU``), or
    None for any other sequence of modules."""
    layers = [_layer(m) for m in modules[::2]]
    relus = modules[1::2]
    if None in layers or any(type(m) is not nn.ReLU for m in relus):
        return None
    if len(relus) != (len(layers) if relu_last else len(layers) - 1):
        return None
    return layers  # type: ignore[return-value]


_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def hooked(modules: list[nn.Module], params: list[nn.Parameter]) -> bool:
    """Whether a user hook on one of ``modules`` or ``params`` (or a global module hook)
    would be skipped by the update below."""
    module = nn.modules.module  # hooks registered for every module
    if any(getattr(module, name) for name in _GLOBAL_HOOKS):
        return True
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
    return any(p._backward_hooks or p._post_accumulate_grad_hooks for p in params)


class DirectUpdate:
    """The loss and gradients of :meth:`DQNAgent._step` without autograd."""

    def __init__(
        self,
        online: Plan,
        target: Plan,
        q_net: nn.Module,
        target_net: nn.Module,
        config: Config,
        head: Head,
        head_input: HeadInputOf,
    ) -> None:
        self.online, self.target = online, target
        self.config = config
        self.head, self.head_input = head, head_input  # the agent's: one place for each
        # what the hook check looks at, listed once: walking the module tree costs ~10 µs
        self._modules = [*q_net.modules(), *target_net.modules()]
        self._params = [*q_net.parameters(), *target_net.parameters()]

    @classmethod
    def of(
        cls, q_net: nn.Module, target_net: nn.Module, config: Config, head: Head, head_input: HeadInputOf
    ) -> DirectUpdate | None:
        """The direct update of these two networks, or None where they are not built of
        plain layers (:meth:`Plan.of`)."""
        online, target = Plan.of(q_net), Plan.of(target_net)
        if online is None or target is None:
            return None
        return cls(online, target, q_net, target_net, config, head, head_input)

    def applies(self) -> bool:
        """False while a hook is registered that this update would skip."""
        return not hooked(self._modules, self._params)

    def gradients(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Set each online parameter's ``.grad`` as ``loss.backward()`` would for ``batch``
        (device tensors); returns (loss, priority [B], Q(s, a) [B])."""
        # Every tensor here is detached (the layers hold detached views of the parameters),
        # so no operation records a graph, without a no_grad block.
        next_obs = self.online.prepare(batch.next_obs)
        next_online = q_values(self.online, next_obs)[0] if self.config.double else None
        next_target = q_values(self.target, next_obs)[0]
        out, saved = q_values(self.online, self.online.prepare(batch.obs))
        x = self.head_input(batch, out, next_target, next_online)
        (per_sample_B, priority_B, q_B), head_saved = self.head.forward(x)
        loss = batch_loss(per_sample_B, batch.weights)

        # backward, formula by formula as autograd runs it: the batch loss, the head, then
        # the network
        grad_out = self.head.backward(x, head_saved, batch_loss_backward(loss, batch.weights))
        for param, grad in q_backward(self.online, saved, grad_out):
            param.grad = grad
        return loss, priority_B, q_B


Saved = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]  # activations per chain
LayerGrads = list[tuple[nn.Parameter, torch.Tensor | None]]  # every parameter with its gradient


def q_values(plan: Plan, x: torch.Tensor) -> tuple[torch.Tensor, Saved]:
    """The output of ``plan`` on the prepared input ``x`` (Q [B, A], or [B, A, K] with
    atoms), and the activations its backward reads. The views and the dueling combination
    are the network's expressions, op for op."""
    body = forward(plan.body, x, relu_last=True)
    features_BH = body[-1].flatten(1) if plan.flatten else body[-1]
    head = forward(plan.head, features_BH)
    k = plan.atoms
    if plan.advantage is None:
        out = head[-1].view(-1, plan.n_actions, k) if k > 1 else head[-1]
        return out, (body, head, None)
    advantage = forward(plan.advantage, features_BH)
    value, adv = head[-1], advantage[-1]
    if k > 1:
        value, adv = value.view(-1, 1, k), adv.view(-1, plan.n_actions, k)
    return value + adv - adv.mean(dim=1, keepdim=True), (body, head, advantage)


def q_backward(plan: Plan, saved: Saved, grad_out: torch.Tensor) -> LayerGrads:
    """Every parameter's gradient from the gradient of the output ([B, A] or [B, A, K]), as
    autograd computes them. A view's backward is a reshape to the viewed tensor's shape."""
    body, head, advantage = saved
    needs_input = bool(plan.body)  # the body's output is the features both branches read
    if plan.advantage is None:
        grads, grad_features = backward(plan.head, head, grad_out.reshape(head[-1].shape), needs_input)
    else:
        # Q = (V + A) - mean(A): the sub passes g on and -g, summed to the mean's [B, 1]; the
        # mean spreads it back over A / n; the add sums g to V's [B, 1] and passes g to A.
        # A's two gradients add up (in either order: a sum of two is commutative).
        grad_mean = (-grad_out).sum(1, keepdim=True)
        grad_adv = grad_out + grad_mean.expand_as(grad_out) / grad_out.shape[1]
        grad_v = grad_out.sum(1, keepdim=True).reshape(head[-1].shape)
        grads, grad_v = backward(plan.head, head, grad_v, needs_input)
        grads_a, grad_a = backward(plan.advantage, advantage, grad_adv.reshape(advantage[-1].shape), needs_input)
        grads += grads_a
        grad_features = grad_v + grad_a if needs_input else None
    if needs_input:
        assert grad_features is not None
        grad_body = grad_features.reshape(body[-1].shape)  # Flatten's backward (a no-op for an MLP)
        grads = backward(plan.body, body, aten.threshold_backward(grad_body, body[-1], 0), False)[0] + grads
    return grads


def forward(layers: list[Layer], x: torch.Tensor, relu_last: bool = False) -> list[torch.Tensor]:
    """Every layer's output of ``layer, ReLU, ..., layer`` (and a last ReLU if
    ``relu_last``) on ``x``: [x, h1, ..., out]."""
    outs = [x]
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        z = layer.forward(outs[-1])
        outs.append(z if i == last and not relu_last else z.relu_())  # nothing reads z before its ReLU
    return outs


def backward(
    layers: list[Layer], activations: list[torch.Tensor], grad_out: torch.Tensor, needs_input: bool
) -> tuple[LayerGrads, torch.Tensor | None]:
    """Each layer's parameter gradients from the gradient of the last layer's output (before
    any ReLU of its own), and, if ``needs_input``, the gradient of the first layer's input.
    Through each ReLU between layers, ``threshold_backward`` on its output."""
    grads: LayerGrads = []
    grad = grad_out
    for i in range(len(layers) - 1, -1, -1):
        x = activations[i]
        layer_grads, grad_x = layers[i].backward(grad, x, needs_input=i > 0 or needs_input)
        grads += layer_grads
        if i:
            grad = aten.threshold_backward(grad_x, x, 0)
        elif needs_input:
            return grads, grad_x
    return grads, None
