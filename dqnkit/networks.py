"""Q-networks: an MLP for vector observations, the Nature CNN for stacked frames, the
MinAtar CNN for small grids, a dueling head for any of them, noisy linear layers, and
distributional outputs (``atoms`` values per action for C51 / QR-DQN).

Shape legend: B batch, A actions, K atoms (or quantiles), D observation features, H hidden width.
A network returns Q [B, A] when ``atoms == 1`` and [B, A, K] otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Linear = Callable[[int, int], nn.Module]


class NoisyLinear(nn.Module):
    """Factorised-Gaussian noisy linear layer (Fortunato et al. 2018, https://arxiv.org/abs/1706.10295).

    ``y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b`` with ``eps_w = f(e_out) f(e_in)^T``,
    ``f(x) = sign(x) sqrt(|x|)``: the network learns how much to explore per weight, which
    replaces epsilon-greedy. The noise is a buffer, drawn only by :meth:`reset_noise` (from a
    generator the agent owns, so a seed fixes it); in ``eval()`` mode the layer uses the means.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma0 * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 * bound))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))

    def reset_noise(self, generator: torch.Generator | None = None) -> None:
        """Draw fresh factorised noise from ``generator`` (the agent's, so runs are seeded)."""
        for eps in (self.eps_in, self.eps_out):
            noise = torch.randn(
                eps.shape, generator=generator, device=eps.device if generator is None else generator.device
            )
            eps.copy_(noise.sign() * noise.abs().sqrt())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` with noisy weights in training mode, mean weights in eval mode."""
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        return F.linear(x, weight, self.bias_mu + self.bias_sigma * self.eps_out)


def hidden(layer: nn.Module, shape: int | tuple[int, ...], layer_norm: bool) -> list[nn.Module]:
    """A hidden layer and its ReLU, with a LayerNorm over its output ``shape`` between them
    when ``layer_norm`` (PQN). Without it the modules, and so the state_dict keys, are as
    before: older checkpoints still load."""
    return [layer, nn.LayerNorm(shape), nn.ReLU()] if layer_norm else [layer, nn.ReLU()]


def reset_noise(net: nn.Module, generator: torch.Generator | None = None) -> None:
    """Draw fresh noise for every noisy layer of ``net`` (no-op for a plain network)."""
    for module in net.modules():
        if isinstance(module, NoisyLinear):
            module.reset_noise(generator)


class DuelingHead(nn.Module):
    """Q = V + A - mean(A) (Wang et al. 2016, https://arxiv.org/abs/1511.06581).

    Subtracting the mean advantage makes the split identifiable: without it a constant
    could move freely between V and A. With atoms, the same holds per atom (Rainbow).
    """

    def __init__(
        self,
        in_features: int,
        n_actions: int,
        hidden_width: int,
        atoms: int = 1,
        linear: Linear = nn.Linear,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_actions, self.atoms = n_actions, atoms
        w = hidden_width
        self.value = nn.Sequential(*hidden(linear(in_features, w), w, layer_norm), linear(w, atoms))
        self.advantage = nn.Sequential(*hidden(linear(in_features, w), w, layer_norm), linear(w, n_actions * atoms))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Q = V + A - mean(A): [B, hidden] -> [B, A] (or [B, A, K] with atoms)."""
        value, adv = self.value(features), self.advantage(features)
        if self.atoms > 1:
            value, adv = value.view(-1, 1, self.atoms), adv.view(-1, self.n_actions, self.atoms)
        return value + adv - adv.mean(dim=1, keepdim=True)


class _Head(nn.Module):
    """Features -> [B, A] (or [B, A, K] with atoms): a dueling head or hidden + output layers."""

    def __init__(
        self,
        in_features: int,
        n_actions: int,
        width: int | None,
        dueling: bool,
        atoms: int,
        linear: Linear,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_actions, self.atoms = n_actions, atoms
        if dueling:
            self.net: nn.Module = DuelingHead(in_features, n_actions, width or in_features, atoms, linear, layer_norm)
        elif width:
            self.net = nn.Sequential(
                *hidden(linear(in_features, width), width, layer_norm), linear(width, n_actions * atoms)
            )
        else:
            self.net = linear(in_features, n_actions * atoms)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)
        return out.view(-1, self.n_actions, self.atoms) if self.atoms > 1 else out


class MLP(nn.Module):
    """Fully connected Q-network: obs [B, D] -> Q [B, A]."""

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int],
        dueling: bool = False,
        atoms: int = 1,
        linear: Linear = nn.Linear,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        # The dueling streams take the place of the last hidden layer, so the network's depth
        # and width stay comparable with the plain one.
        body_sizes = hidden_sizes[:-1] if dueling else hidden_sizes
        for h in body_sizes:
            layers += hidden(linear(width, h), h, layer_norm)
            width = h
        self.body = nn.Sequential(*layers)
        last = hidden_sizes[-1] if dueling else None
        self.head = _Head(width, n_actions, last, dueling, atoms, linear, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, *obs] (flattened) -> [B, A] (or [B, A, K])."""
        return self.head(self.body(self.prepare(obs)))

    @staticmethod
    def prepare(obs: torch.Tensor) -> torch.Tensor:
        """Observations [B, *obs] as the float features [B, D] the first layer reads."""
        return obs.flatten(1).float()


class NatureCNN(nn.Module):
    """Mnih et al. 2015 (https://www.nature.com/articles/nature14236): uint8 frames
    [B, C, H, W] (Atari: [B, 4, 84, 84]) -> Q [B, A]; its linear layer is sized from H and W
    (3136 inputs for 84x84), which must be 36 or more. Scaling to [0, 1] happens here, on the
    device, so replay and the host-to-device copy stay uint8."""

    def __init__(
        self,
        in_channels: int,
        n_actions: int,
        dueling: bool = False,
        atoms: int = 1,
        linear: Linear = nn.Linear,
        layer_norm: bool = False,
        frame_shape: tuple[int, int] = (84, 84),
    ) -> None:
        super().__init__()
        sizes = [tuple(frame_shape)]
        for kernel, stride in ((8, 4), (4, 2), (3, 1)):  # each convolution's output side
            sizes.append(tuple((side - kernel) // stride + 1 for side in sizes[-1]))
        if min(sizes[-1]) < 1:
            raise ValueError(f"frames {frame_shape} are too small for the Nature CNN (36x36 at least)")
        self.body = nn.Sequential(
            *hidden(nn.Conv2d(in_channels, 32, 8, stride=4), (32, *sizes[1]), layer_norm),
            *hidden(nn.Conv2d(32, 64, 4, stride=2), (64, *sizes[2]), layer_norm),
            *hidden(nn.Conv2d(64, 64, 3, stride=1), (64, *sizes[3]), layer_norm),
            nn.Flatten(),
        )
        self.head = _Head(64 * math.prod(sizes[3]), n_actions, 512, dueling, atoms, linear, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, C, H, W] (scaled to [0, 1] here) -> [B, A] (or [B, A, K])."""
        return self.head(self.body(self.prepare(obs)))

    @staticmethod
    def prepare(obs: torch.Tensor) -> torch.Tensor:
        """uint8 frames as floats in [0, 1]."""
        return obs.float() / 255.0


class MinAtarCNN(nn.Module):
    """Young & Tian 2019 (https://arxiv.org/abs/1903.03176): one 3x3 convolution with 16
    filters and a 128-unit layer, for small 0/1 grids [B, C, H, W] (MinAtar: 10x10), or
    small uint8 images (``scale`` 1/255: the pixel path's frames under 36 pixels a side)."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        n_actions: int,
        dueling: bool = False,
        atoms: int = 1,
        linear: Linear = nn.Linear,
        layer_norm: bool = False,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        c, h, w = obs_shape
        self.scale = scale
        self.body = nn.Sequential(*hidden(nn.Conv2d(c, 16, 3, stride=1), (16, h - 2, w - 2), layer_norm), nn.Flatten())
        self.head = _Head(16 * (h - 2) * (w - 2), n_actions, 128, dueling, atoms, linear, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """MinAtar grids [B, C, 10, 10] -> [B, A] (or [B, A, K])."""
        return self.head(self.body(self.prepare(obs)))

    def prepare(self, obs: torch.Tensor) -> torch.Tensor:
        """0/1 grids as floats; images scaled to [0, 1]."""
        return obs.float() if self.scale == 1.0 else obs.float() * self.scale


def build_q_network(
    obs_shape: tuple[int, ...],
    n_actions: int,
    hidden_sizes: Sequence[int],
    dueling: bool = False,
    atoms: int = 1,
    noisy: bool = False,
    noisy_sigma0: float = 0.5,
    layer_norm: bool = False,
    images: bool = False,
) -> nn.Module:
    """The Q-network that fits ``obs_shape``: NatureCNN for [C, H, W] frames of 36 pixels a
    side or more (Atari's, the pixel path's), MinAtarCNN for smaller [C, H, W] grids (and
    small ``images`` of 0-255 values, scaled), else an MLP over the flattened observation.
    ``noisy`` turns
    every fully connected layer into a :class:`NoisyLinear`; ``layer_norm`` normalises every
    hidden layer's output."""

    def linear(i: int, o: int) -> nn.Module:
        return NoisyLinear(i, o, noisy_sigma0) if noisy else nn.Linear(i, o)

    options = dict(dueling=dueling, atoms=atoms, linear=linear, layer_norm=layer_norm)
    if len(obs_shape) == 3 and min(obs_shape[1:]) >= 36:
        return NatureCNN(obs_shape[0], n_actions, **options, frame_shape=obs_shape[1:])
    if len(obs_shape) == 3:
        return MinAtarCNN(obs_shape, n_actions, **options, scale=1 / 255 if images else 1.0)
    return MLP(math.prod(obs_shape), n_actions, hidden_sizes, **options)
