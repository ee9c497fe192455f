"""Q-networks: an MLP for vector observations, the Nature CNN for stacked frames, and a
dueling head for either.

Shape legend: B batch, A actions, D observation features, H hidden width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DuelingHead(nn.Module):
    """Q = V + A - mean(A) (Wang et al. 2016, https://arxiv.org/abs/1511.06581).

    Subtracting the mean advantage makes the split identifiable: without it a constant
    could move freely between V and A.
    """

    def __init__(self, in_features: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.value = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.advantage = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_actions))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        value_B1 = self.value(features)
        adv_BA = self.advantage(features)
        return value_B1 + adv_BA - adv_BA.mean(dim=1, keepdim=True)


class MLP(nn.Module):
    """Fully connected Q-network: obs [B, D] -> Q [B, A]."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int], dueling: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        body_sizes = hidden_sizes[:-1] if dueling else hidden_sizes
        for h in body_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        # The dueling streams take the place of the last hidden layer, so the network's depth
        # and width stay comparable with the plain one.
        self.head = (DuelingHead(width, n_actions, hidden_sizes[-1]) if dueling
                     else nn.Linear(width, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(obs.flatten(1).float()))


class NatureCNN(nn.Module):
    """Mnih et al. 2015 (https://www.nature.com/articles/nature14236): uint8 frames
    [B, C, 84, 84] -> Q [B, A]. Scaling to [0, 1] happens here, on the device, so replay
    and the host-to-device copy stay uint8."""

    def __init__(self, in_channels: int, n_actions: int, dueling: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.head = (DuelingHead(3136, n_actions, 512) if dueling
                     else nn.Sequential(nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, n_actions)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(obs.float() / 255.0))


class MinAtarCNN(nn.Module):
    """Young & Tian 2019 (https://arxiv.org/abs/1903.03176): one 3x3 convolution with 16
    filters and a 128-unit layer, for small 0/1 grids [B, C, H, W] (MinAtar: 10x10)."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, dueling: bool = False) -> None:
        super().__init__()
        c, h, w = obs_shape
        self.body = nn.Sequential(nn.Conv2d(c, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
        features = 16 * (h - 2) * (w - 2)
        self.head = (DuelingHead(features, n_actions, 128) if dueling
                     else nn.Sequential(nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, n_actions)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(obs.float()))


def build_q_network(obs_shape: tuple[int, ...], n_actions: int, hidden_sizes: Sequence[int],
                    dueling: bool = False) -> nn.Module:
    """The Q-network that fits ``obs_shape``: NatureCNN for [C, 84, 84] frames, MinAtarCNN
    for other [C, H, W] grids, else an MLP over the flattened observation."""
    if len(obs_shape) == 3 and obs_shape[1:] == (84, 84):
        return NatureCNN(obs_shape[0], n_actions, dueling=dueling)
    if len(obs_shape) == 3:
        return MinAtarCNN(obs_shape, n_actions, dueling=dueling)
    obs_dim = 1
    for d in obs_shape:
        obs_dim *= d
    return MLP(obs_dim, n_actions, hidden_sizes, dueling=dueling)
