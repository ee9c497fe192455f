"""The DQN agent: epsilon-greedy acting and the update step.

Double DQN, the loss, gradient clipping, hard/soft target updates, noisy nets and the
distributional heads (C51, QR-DQN) are options of one agent, not subclasses: an ablation is
one config key away. The TD targets and losses are the heads of :mod:`dqnkit.heads`, picked
once from ``config.distributional``; this module runs them.

Shape legend: B batch, A actions, K atoms or quantiles.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from dqnkit.config import Config
from dqnkit.errors import first_line
from dqnkit.grads import GradBuffer
from dqnkit.heads import HEADS, HeadInput, batch_loss, discounts
from dqnkit.networks import MLP, reset_noise
from dqnkit.replay.uniform import Batch
from dqnkit.schedules import ExplorationDraws

# a Linear layer as numpy (weight, bias), and the LayerNorm after it (scale, shift, eps) if any
NumpyLayer = tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, float] | None]


class LearnStats(NamedTuple):
    """What one update reports. Tensors, so the hot loop never waits for a host sync."""

    loss: torch.Tensor  # scalar
    td_abs: torch.Tensor  # [B] |Q(s,a) - target|, the PER priority signal
    q_mean: torch.Tensor  # scalar, mean Q(s,a) of the batch


class QAgent:
    """What every agent of the family shares: a Q-network on a device, epsilon-greedy
    acting with its own RNG, and greedy evaluation. :class:`DQNAgent` adds the target
    network and replay updates; :class:`dqnkit.pqn.PQNAgent` adds rollout updates."""

    def __init__(
        self,
        q_net: nn.Module,
        obs_shape: tuple[int, ...],
        n_actions: int,
        config: Config,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.obs_shape = tuple(obs_shape)
        self.n_actions = int(n_actions)
        self.device = torch.device(device)
        self.q_net = q_net.to(self.device)
        self.rng = np.random.default_rng([config.seed, 1])  # exploration only
        self.draws = ExplorationDraws(self.rng, self.n_actions)
        # noisy nets draw from their own generator: a seed fixes the noise, and evaluating
        # (which uses the mean weights) never shifts the training noise
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed + 2)
        self.support = torch.linspace(config.v_min, config.v_max, config.n_atoms, device=self.device)
        self.head = HEADS[config.distributional]
        self.updates = 0  # gradient steps taken
        self._grads: GradBuffer | None = None  # made at the first update: an agent that only acts has none
        self._numpy_layers = _numpy_mlp(self.q_net, config, self.device)
        # noisy nets redraw their noise before each acting step, outside any graph: eager
        self._act_graph_wanted = self.device.type == "cuda" and config.cuda_graph and not config.noisy
        self._graphed_acts: dict[int, Any] = {}  # captured forward passes by batch size
        self._optimizer: torch.optim.Optimizer | None = None  # see `optimizer`
        self._optimizer_state: dict[str, Any] | None = None  # a state loaded before it is built

    # --------------------------------------------------------------- optimizer
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer, built at its first use with any state loaded before then. An agent
        that only acts (``load`` for evaluation, an Ape-X actor) never builds one: torch.optim's
        first optimizer imports torch's dynamo compiler, 0.8 s a process here (measured). A learner's
        is built at once by ``build_agent``, before its clock starts."""
        if self._optimizer is None:
            self._optimizer = self._build_optimizer()
            if self._optimizer_state is not None:
                load_optimizer_state(self._optimizer, self._optimizer_state)
                self._optimizer_state = None
        return self._optimizer

    def _build_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError  # each agent picks its own

    def _descend(self, loss: torch.Tensor) -> None:
        """One optimizer step down ``loss``'s gradient, clipped to ``max_grad_norm`` (0: not clipped)."""
        optimizer = self.optimizer
        if self._grads is None:
            self._grads = GradBuffer(list(self.q_net.parameters()))
        self._grads.zero_()
        loss.backward()
        if self.config.max_grad_norm > 0:
            self._grads.clip_norm_(self.config.max_grad_norm)
        optimizer.step()

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        """Load ``state`` into the optimizer, or keep a copy of it for its first use (a copy:
        the state may be another live agent's, whose steps would change it)."""
        if self._optimizer is None:
            self._optimizer_state = copy.deepcopy(state)
        else:
            load_optimizer_state(self._optimizer, state)

    # ------------------------------------------------------------------ acting
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Online-network Q-values for a batch of observations: [B, *obs] -> [B, A] (one
        observation [*obs] -> [A]). For a distributional agent, the expected value of each
        action's return distribution."""
        batch, single = self._as_batch(obs if torch.is_tensor(obs) else np.asarray(obs))
        with torch.inference_mode():
            q = self._expected(self.q_net(self._tensor(batch))).cpu().numpy()
        return q[0] if single else q

    def _as_batch(self, obs: Any) -> tuple[Any, bool]:
        """(``obs`` as a batch [B, *obs_shape], whether it was one observation). Observations
        of another env get a one-line error here, not torch's from deep inside the network."""
        single = obs.ndim == len(self.obs_shape)
        batch = obs[None] if single else obs
        if batch.shape[1:] != self.obs_shape:  # torch.Size is a tuple too
            raise ValueError(
                f"observations of shape {tuple(obs.shape)} do not fit this agent's {self.obs_shape} "
                f"(one observation, or a batch [B, {', '.join(map(str, self.obs_shape))}])"
            )
        return batch, single

    def _numpy_q(self, obs: np.ndarray) -> np.ndarray:
        """The plain MLP's forward pass in numpy: [B, *obs] -> [B, A]. Acting needs no
        autograd and no torch dispatch; on this CPU it is about 5x faster for one
        observation (15 against 77 µs at 256x256, measured)."""
        h = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
        last = len(self._numpy_layers) - 1
        for i, (weight, bias, norm) in enumerate(self._numpy_layers):
            h = h @ weight.T
            h += bias  # in place: one temporary less per layer
            if norm is not None:  # LayerNorm: each row to zero mean, unit variance, then scaled
                scale, shift, eps = norm
                h -= h.mean(axis=1, keepdims=True)
                h *= scale / np.sqrt((h * h).mean(axis=1, keepdims=True) + eps)
                h += shift
            if i < last:
                np.maximum(h, 0.0, out=h)
        return h

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Noisy layers use their mean weights inside this block (greedy evaluation)."""
        self.q_net.eval()
        try:
            yield
        finally:
            self.q_net.train()

    def _expected(self, out: torch.Tensor) -> torch.Tensor:
        """Network output -> Q [B, A] (for a distributional head, each action's mean)."""
        return self.head.expected(out, self.support)

    def act(
        self, obs: np.ndarray, epsilon: float = 0.0, greedy: bool = False, rng: np.random.Generator | None = None
    ) -> np.ndarray | int:
        """Epsilon-greedy actions for a batch [B, *obs] -> [B] int64.

        A single unbatched observation returns a plain int. ``greedy=True`` means epsilon 0.
        Without ``rng`` the randoms come from the agent's :class:`ExplorationDraws`; evaluation
        passes its own RNG, so that evaluating never changes the training trajectory. Every
        call consumes the same randoms whatever epsilon and the network say, so runs stay
        reproducible when either changes.
        """
        batch, single = self._as_batch(np.asarray(obs))
        if rng is None:
            uniform_B, random_B = self.draws.take(len(batch))
        else:
            uniform_B, random_B = rng.random(len(batch)), rng.integers(0, self.n_actions, size=len(batch))
        explore_B = uniform_B < (0.0 if greedy else epsilon)
        explored = np.count_nonzero(explore_B)
        if explored == len(batch):
            actions = random_B.copy()
        else:
            if self.config.noisy and self.q_net.training:
                reset_noise(self.q_net, self.noise)  # fresh exploration noise every step
            actions = self._greedy(batch)
            if explored:
                actions = np.where(explore_B, random_B, actions)
        return int(actions[0]) if single else actions

    def _greedy(self, batch: np.ndarray) -> np.ndarray:
        """argmax_a Q(s, a) for observations [B, *obs] -> [B] int64: numpy for a small MLP on
        the CPU; while training on CUDA (``config.cuda_graph``), a forward pass captured as a
        CUDA graph (:class:`dqnkit.cuda_graph.GraphedAct`); else eager torch."""
        if self._numpy_layers:
            return self._numpy_q(batch).argmax(axis=1)
        if self._act_graph_wanted and self.q_net.training:
            graphed = self._graphed_acts.get(len(batch)) or self._capture_act(batch)
            if graphed is not None:
                return graphed(batch)
        return self.q_values(batch).argmax(axis=1)

    def _capture_act(self, batch: np.ndarray) -> Any:
        """Capture acting for batches of this size; where that fails, say so once and act
        eagerly from then on (the same actions, only slower)."""
        from dqnkit.cuda_graph import GraphedAct  # CUDA-only code stays out of CPU imports

        try:
            q_values = lambda obs: self._expected(self.q_net(obs))  # noqa: E731
            self._graphed_acts[len(batch)] = graphed = GraphedAct(q_values, self.device, batch)
            return graphed
        except RuntimeError as exc:
            self._act_graph_wanted = False
            warnings.warn(
                f"CUDA graph capture of acting failed ({first_line(exc)}); acting eagerly (--set cuda_graph=false "
                "silences this)",
                stacklevel=4,
            )
            return None

    def _tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``array`` on the agent's device (a tensor already there, e.g. stacks a replay
        gathered on the device, passes through uncopied)."""
        return torch.as_tensor(array, device=self.device)


class DQNAgent(QAgent):
    """Online and target Q-networks, an Adam optimizer and an exploration RNG.

    Composition (PFRL style): the agent is handed its network; the training loop owns the
    env and the replay and decides *when* to learn and to update the target.
    """

    def __init__(
        self,
        q_net: nn.Module,
        obs_shape: tuple[int, ...],
        n_actions: int,
        config: Config,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(q_net, obs_shape, n_actions, config, device)
        self.target_net = copy.deepcopy(self.q_net).requires_grad_(False)
        self._graph_wanted = self.device.type == "cuda" and config.cuda_graph
        self._graphed: Any = None  # the captured update, built at the first learn()

    def _build_optimizer(self) -> torch.optim.Adam:
        # fused: one kernel for all parameters, about 3x faster than the default on CPU (measured)
        # A captured update needs Adam's step count on the device (capturable).
        cfg = self.config
        return torch.optim.Adam(
            self.q_net.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True, capturable=self._graph_wanted
        )

    # ---------------------------------------------------------------- learning
    def learn(self, batch: Batch) -> LearnStats:
        """One gradient step on ``batch``; IS weights scale each sample's loss.

        On CUDA (``config.cuda_graph``) the whole step replays as one captured graph
        (:class:`dqnkit.cuda_graph.GraphedUpdate`), built at the first call; elsewhere it runs
        eagerly. Both run :meth:`_step`, so the arithmetic is the same.
        """
        if self._graph_wanted and (self._graphed is None or self._graphed.batch_size != len(batch.actions)):
            self._capture(batch)
        if self._graphed is not None:
            stats = self._graphed(batch)
        else:
            stats = self._step(self._tensors(batch))
        self.updates += 1
        return stats

    def _capture(self, batch: Batch) -> None:
        """Build the graphed update; where capture fails (an old driver, an op that cannot be
        captured), say so once and keep updating eagerly: same results, only slower."""
        from dqnkit.cuda_graph import GraphedUpdate, Learner  # CUDA-only code stays out of CPU imports

        noise = self.noise if self.config.noisy else None
        learner = Learner(self._step, (self.q_net, self.target_net), self.optimizer, noise, self.device)
        try:
            self._graphed = GraphedUpdate(learner, batch)
        except RuntimeError as exc:
            self._graph_wanted, self._graphed = False, None
            warnings.warn(
                f"CUDA graph capture failed ({first_line(exc)}); updating eagerly (--set cuda_graph=false "
                "silences this)",
                stacklevel=3,
            )

    def _step(self, batch: Batch) -> LearnStats:
        """The update on a batch of device tensors: fresh noise, loss, backward, clipping,
        Adam. Free of host syncs and of Python branches on data, so it can be captured."""
        cfg = self.config
        if cfg.noisy:  # independent noise for the online and the target network, every update
            reset_noise(self.q_net, self.noise)
            reset_noise(self.target_net, self.noise)
        per_sample_B, priority_B, q_B = self._losses(batch)
        loss = batch_loss(per_sample_B, batch.weights)
        self._descend(loss)
        return LearnStats(loss.detach(), priority_B, q_B.detach().mean())

    def priorities(self, batch: Batch) -> np.ndarray:
        """The PER priority signal of each transition [B] without learning from it (Ape-X
        actors give new transitions these initial priorities)."""
        with torch.no_grad():
            return self._losses(self._tensors(batch))[1].cpu().numpy()

    def _tensors(self, batch: Batch) -> Batch:
        """The batch's arrays as tensors on the agent's device (``indices`` stay numpy)."""
        return batch._replace(**{name: self._tensor(getattr(batch, name)) for name in Batch._fields[:-1]})

    def _losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample loss, priority, Q(s, a)), each [B], from the configured head; ``batch``
        holds device tensors."""
        with torch.no_grad():
            next_online = self.q_net(batch.next_obs) if self.config.double else None
            next_target = self.target_net(batch.next_obs)
        return self.head.loss(self._head_input(batch, self.q_net(batch.obs), next_target, next_online))

    def _head_input(
        self, batch: Batch, out: torch.Tensor, next_target: torch.Tensor, next_online: torch.Tensor | None
    ) -> HeadInput:
        """What the head reads: the networks' outputs and the batch's tensors."""
        cfg = self.config
        return HeadInput(
            out=out,
            next_target=next_target,
            next_online=next_online,
            actions_B=batch.actions,
            rewards_B=batch.rewards,
            terminated_B=batch.terminated,
            discounts_B=discounts(cfg.gamma, batch.horizons),
            support_K=self.support,
            loss=cfg.loss,
            qr_kappa=cfg.qr_kappa,
        )

    def update_target(self) -> None:
        """Hard copy (``tau == 0``) or Polyak blend ``target <- tau*online + (1-tau)*target``."""
        tau = self.config.tau
        with torch.no_grad():  # the target is a deep copy: the same parameters and buffers, in the same order
            for t_param, o_param in zip(self.target_net.parameters(), self.q_net.parameters()):
                if tau == 0:
                    t_param.copy_(o_param)
                else:
                    t_param.lerp_(o_param, tau)
            for t_buf, o_buf in zip(self.target_net.buffers(), self.q_net.buffers()):
                t_buf.copy_(o_buf)

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer, exploration RNG, noise generator and update count: all a resume needs."""
        return {
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.draws.state_dict(),
            "noise": self.noise.get_state(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content (onto this agent's device; the captured update is rebuilt)."""
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        self._load_optimizer(state["optimizer"])
        self.draws.load_state_dict(state["rng"])
        self._load_noise_state(state["noise"])
        self.updates = int(state["updates"])
        self._graphed = None  # the optimizer's state tensors are new: capture again

    def _load_noise_state(self, noise_state: torch.Tensor) -> None:
        """A CUDA generator's state (seed and offset) does not fit a CPU generator and the
        reverse: a checkpoint moved across devices keeps this device's seeded noise stream."""
        try:
            self.noise.set_state(noise_state)
        except RuntimeError:
            warnings.warn(
                "the checkpoint's noisy-net generator belongs to another device type: its noise "
                "stream restarts from the seed here",
                stacklevel=3,
            )


def _numpy_mlp(q_net: nn.Module, config: Config, device: torch.device) -> list[NumpyLayer]:
    """(weight, bias, LayerNorm or None) numpy views of a plain CPU MLP's layers, for acting;
    [] for any other network. The views share memory with the parameters, which the
    optimizer and ``load_state_dict`` update in place, so they never go stale."""
    plain = (
        isinstance(q_net, MLP)
        and device.type == "cpu"
        and not config.noisy
        and not config.dueling
        and config.distributional == "none"
    )
    if not plain:
        return []
    layers: list[NumpyLayer] = []
    for m in q_net.modules():
        if isinstance(m, nn.Linear):
            layers.append((m.weight.detach().numpy(), m.bias.detach().numpy(), None))
        elif isinstance(m, nn.LayerNorm):  # normalises the output of the Linear before it
            weight, bias, _ = layers[-1]
            layers[-1] = (weight, bias, (m.weight.detach().numpy(), m.bias.detach().numpy(), m.eps))
    return layers


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict`` on a copy: torch keeps the given moment tensors where
    their device and dtype already fit, so loading another live agent's state would make the
    two optimizers step the same tensors. Each group keeps its own ``capturable``: a
    checkpoint from another device (or with CUDA graphs off) must not change this run's mode."""
    capturable = [group.get("capturable") for group in optimizer.param_groups]
    optimizer.load_state_dict(copy.deepcopy(state))
    for group, mode in zip(optimizer.param_groups, capturable):
        if mode is not None:
            group["capturable"] = mode
