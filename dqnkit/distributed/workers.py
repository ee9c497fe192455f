"""The processes of an Ape-X run besides the learner (:mod:`dqnkit.distributed.apex`), each
a Ray actor: the :class:`ActorWorker` s that collect, the :class:`ReplayServer` that holds
their transitions, and the :class:`WeightStore` through which the learner's network
reaches them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from dqnkit.algorithms import build_replay, stores_frames
from dqnkit.build import build_agent
from dqnkit.config import Config
from dqnkit.envs import EnvMaker
from dqnkit.replay import FrameReplay, UniformReplay
from dqnkit.replay.nstep import NStepFolder
from dqnkit.replay.uniform import Batch
from dqnkit.vector import finished_episodes, true_next_obs


def actor_epsilon(i: int, actors: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Ape-X's fixed per-actor exploration rate: from 0.4 (actor 0) down to 0.4**8."""
    return base if actors == 1 else base ** (1 + alpha * i / (actors - 1))


def published_weights(agent: Any) -> dict[str, np.ndarray]:
    """What the learner publishes: its online network's tensors as numpy arrays (Ray copies
    them when the call is made, so the next update cannot change what was published)."""
    return {k: v.detach().cpu().numpy() for k, v in agent.q_net.state_dict().items()}


def load_weights(agent: Any, weights: dict[str, np.ndarray]) -> None:
    """An actor takes the learner's published network as its online *and* its target
    network: its initial priorities bootstrap from that copy (Ape-X actors hold one network).
    A target left at its initialisation would score every new transition against random
    values, |Q(s, a) - r - gamma Q_init(s')| ~ |Q(s, a)|, and so rank them by the size of Q."""
    state = {k: torch.as_tensor(v) for k, v in weights.items()}
    agent.q_net.load_state_dict(state)
    agent.target_net.load_state_dict(state)


class ActorWorker:
    """One Ape-X actor (wrapped as a Ray actor by :func:`run`)."""

    def __init__(self, config: Config, index: int, actors: int, replay: str, store: str, sync_every: int) -> None:
        """``replay`` and ``store``: the names of the learner's replay and weight store. Handles
        passed to a constructor would sit in Ray's object store, on which a restart then
        depends (Ray logs an error saying so, ray#53727); a name is looked up again."""
        import ray

        torch.set_num_threads(1)
        self.config = config.replace(device="cpu", seed=config.seed + 1000 * (index + 1))
        self.epsilon = actor_epsilon(index, actors)
        self.envs = EnvMaker.from_config(config).make_vec(config.num_envs, self.config.seed)
        space = self.envs.single_observation_space
        n_actions = int(self.envs.single_action_space.n)
        self.agent = build_agent(self.config, space.shape, n_actions, learns=False, obs_dtype=space.dtype)
        self.replay, self.store, self.sync_every = ray.get_actor(replay), ray.get_actor(store), sync_every
        # Frames go to this actor's own rings of the replay's FrameReplay, which folds n-step
        # returns itself; a restarted actor first cuts the episodes its predecessor left open.
        # Other observations are folded here, and prioritised by this actor.
        self.frames = stores_frames(space.shape, space.dtype, config)
        self.rings = np.arange(index * config.num_envs, (index + 1) * config.num_envs)
        if self.frames:
            ray.get(self.replay.cut.remote(self.rings))
        else:
            self.folder = NStepFolder(config.n_step, config.gamma, config.num_envs, space.shape, space.dtype)
        self.obs, _ = self.envs.reset(seed=self.config.seed)
        self.ep_return = np.zeros(config.num_envs)
        self.ep_length = np.zeros(config.num_envs, np.int64)
        self.version, self.steps = -1, 0
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self._pull()

    def pid(self) -> int:
        """The actor's process id (tests kill it)."""
        return os.getpid()

    def collect(self, vector_steps: int) -> dict[str, Any]:
        """Step the envs, send the finished transitions with their priorities to the replay;
        returns the env steps taken and the episodes (return, length) that ended."""
        parts, episodes = [], []
        for _ in range(vector_steps):
            actions = self.agent.act(self.obs, self.epsilon)
            next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
            real_next = true_next_obs(next_obs, info)
            if self.frames:  # the newest frame of each stack is all a FrameReplay keeps
                parts.append((self.obs[:, -1:], actions, rewards, real_next[:, -1:], terminated, truncated))
            else:
                parts.append(self.folder.push(self.obs, actions, rewards, real_next, terminated, truncated))
            episodes += finished_episodes(self.ep_return, self.ep_length, rewards, terminated, truncated, info)
            self.obs = next_obs
        self.steps += vector_steps * self.config.num_envs
        if self.frames:
            self.replay.add_steps.remote(self.rings, parts)
        else:
            self._send_transitions(parts)
        if self.steps % self.sync_every < vector_steps * self.config.num_envs:
            self._pull()
        steps = vector_steps * self.config.num_envs
        return {"steps": steps, "episodes": episodes, "epsilon": self.epsilon, "node": self.node}

    def _send_transitions(self, parts: list[tuple[np.ndarray, ...]]) -> None:
        """Folded transitions, with the priorities this actor computes for them (Ape-X)."""
        fields = [np.concatenate(f) for f in zip(*parts)]
        fields[4] = fields[4].astype(np.float32)  # terminated, as the replay stores it
        if len(fields[1]):
            batch = Batch(*fields, weights=np.ones(len(fields[1]), np.float32), indices=np.zeros(0, np.int64))
            self.replay.add.remote(fields, self.agent.priorities(batch))

    def _pull(self) -> None:
        import ray

        newer = ray.get(self.store.get.remote(self.version))
        if newer is not None:
            self.version, weights = newer
            load_weights(self.agent, weights)


class ReplayServer:
    """The prioritized replay ``train`` would build, shared by every actor and the learner:
    a :class:`PrioritizedFrameReplay` for stacked frames (each frame stored once, one ring per
    actor env, n-step returns folded at sample time, new transitions entering at the largest
    priority as in train), else a :class:`PrioritizedReplay` of transitions the actors fold
    and prioritise themselves (Ape-X's initial priorities)."""

    def __init__(self, config: Config, obs_shape: tuple[int, ...], obs_dtype: Any, rings: int) -> None:
        self.replay = self.build(config, obs_shape, obs_dtype, rings)

    @staticmethod
    def build(config: Config, obs_shape: tuple[int, ...], obs_dtype: Any, rings: int) -> UniformReplay | FrameReplay:
        """The prioritized replay ``train`` would build, with one ring per actor env."""
        return build_replay(config.replace(prioritized=True, num_envs=rings), obs_shape, obs_dtype)

    def add(self, fields: list[np.ndarray], priorities: np.ndarray) -> None:
        """Store an actor's folded transitions with the priorities the actor computed for them."""
        slots = self.replay.add_batch(*fields)
        self.replay.update_priorities(slots, priorities)

    def add_steps(self, rings: np.ndarray, steps: list[tuple[np.ndarray, ...]]) -> None:
        """Store an actor's vector steps (newest frames only) in its rings of the frame replay."""
        for obs, actions, rewards, next_obs, terminated, truncated in steps:
            self.replay.add_step(obs, actions, rewards, next_obs, terminated, truncated, envs=rings)

    def cut(self, rings: np.ndarray) -> None:
        """An actor (re)starts: end the episodes a predecessor left open in its rings."""
        self.replay.cut(rings)

    def nbytes(self) -> int:
        """Bytes the replay's arrays hold."""
        return int(self.replay.nbytes)

    def sample(self, batch_size: int, beta: float, count: int) -> list[Batch]:
        """``count`` batches in one call: one round trip per ``count`` updates."""
        return [self.replay.sample(batch_size, beta) for _ in range(count)]

    def update_priorities(self, updates: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Apply the learner's new priorities, one (indices, |TD|) pair per update."""
        for indices, priorities in updates:
            self.replay.update_priorities(indices, priorities)


class WeightStore:
    """The newest published weights and their version; actors pull, the learner pushes."""

    def __init__(self) -> None:
        self.version, self.weights = -1, None

    def put(self, version: int, weights: dict[str, np.ndarray]) -> None:
        """Publish ``weights`` as ``version`` (the learner's update count)."""
        self.version, self.weights = version, weights

    def get(self, known: int) -> tuple[int, dict[str, np.ndarray]] | None:
        """The weights if newer than version ``known``, else None (nothing to copy)."""
        return (self.version, self.weights) if self.version > known else None
