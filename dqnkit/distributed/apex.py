"""Ape-X (Horgan et al. 2018, https://arxiv.org/abs/1803.00933) on Ray.

Three kinds of process, all Ray actors except the learner, which is the driver:

- ``K`` :class:`Actor` s, each with its own vector envs, its own copy of the network and a
  fixed epsilon ``0.4 ** (1 + 7 i / (K - 1))``. An actor steps its envs, folds n-step
  transitions, scores them with its copy of the learner's network (the initial priorities,
  bootstrapped from that same copy) and sends them to the replay in batches; with stacked
  Atari frames it sends each step's newest frames to its own rings of the replay's
  FrameReplay instead (which folds and prioritises them as in ``train``). Every
  ``sync_every`` steps it pulls the newest weights.
- one :class:`ReplayServer`: the prioritized replay ``train`` would build (frames stored
  once for Atari) behind a Ray actor.
- the learner (this process): samples, updates, writes priorities back and publishes its
  weights to a :class:`WeightStore` every ``publish_every`` updates.

The learner keeps the replay ratio of single-process training (``gradient_steps`` per
``train_freq`` transitions): collection is throttled while the learner is behind, so on a
small machine the actors cannot starve it. An actor that dies is restarted by Ray
(``max_restarts``) and the run goes on; its lost batch is simply not collected.

Runs are not bit-reproducible (actors and learner interleave as the OS schedules them).
The run directory follows ``dqnkit train``'s contract; checkpoints hold the learner
(networks, optimizer, counters), not the replay. The replay is the one ``train`` builds
(prioritized): for stacked Atari frames a FrameReplay, about 7 KB a transition.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit import __version__
from dqnkit.algorithms import DQN, per_beta
from dqnkit.build import build_agent, check_memory, check_runnable, spaces
from dqnkit.config import Config
from dqnkit.diagnostics import check_loss
from dqnkit.distributed.cluster import connect
from dqnkit.distributed.workers import ActorWorker, ReplayServer, WeightStore, published_weights
from dqnkit.envs import EnvMaker, check_env_id
from dqnkit.errors import DqnkitError
from dqnkit.monitor import (
    RunMonitor,
    check_run_dir,
    open_run_dir,
    pop_learning_stats,
    record_learning_stats,
    run_summary,
)
from dqnkit.training import flush_denormals


@dataclass(frozen=True)
class ApexOptions:
    """How an Ape-X run is spread over processes; the learning itself is the :class:`Config`."""

    actors: int = 2
    ray_address: str | None = None  # None: start a local cluster; "auto" or host:port: join one
    send_every: int = 50  # vector steps an actor collects per batch it sends
    sync_every: int = 400  # env steps between an actor's weight pulls
    publish_every: int = 25  # learner updates between weight publications
    batches_per_request: int = 8  # batches fetched (and priority updates sent) per replay round trip
    max_restarts: int = 3  # per actor
    actor_resources: tuple[tuple[str, float], ...] = ()  # custom Ray resources each actor needs
    connect_timeout_s: float = 10.0  # joining ray_address gives up after this
    actor_timeout_s: float = 120.0  # no actor reporting for this long stops the run (saved)


# Keys whose meaning Ape-X replaces: its actors explore with fixed epsilons (actor_epsilon) and
# its replay is prioritized by definition. Setting one explicitly is refused, not ignored.
NOT_IN_APEX = {
    **dict.fromkeys(
        ("eps_schedule", "eps_start", "eps_end", "exploration_fraction", "exploration_steps", "eps_decay"),
        "Ape-X actors explore with fixed epsilons 0.4 ** (1 + 7 i / (K - 1))",
    ),
    "prioritized": "Ape-X's replay is always prioritized",
    "replay_checkpoint": "Ape-X checkpoints keep the learner, not the replay",
    "overlap_env_step": "Ape-X actors never wait for the learner: their envs and its updates already run apart",
}


def check_apex_keys(keys: Iterable[str], source: str = "--set") -> None:
    """Refuse (exit 2) a config key the user set (in ``source``) that Ape-X would not honour."""
    for key in sorted(set(keys) & set(NOT_IN_APEX)):
        raise DqnkitError(f"{source} {key} does not apply to apex: {NOT_IN_APEX[key]}")


def _check_resources(ray: Any, wanted: dict[str, float]) -> None:
    """Refuse actor resources that no node of the cluster offers (they would never start)."""
    offered = ray.cluster_resources()
    for name, amount in wanted.items():
        if offered.get(name, 0) < amount:
            custom = sorted(k for k in offered if k not in ("CPU", "GPU", "memory", "object_store_memory")
                            and not k.startswith("node:"))  # fmt: skip
            raise DqnkitError(
                f"--actor-resource {name}={amount:g}: the cluster offers {offered.get(name, 0):g} "
                f"(custom resources there: {', '.join(custom) or 'none'}); start a node with "
                f"`ray start --resources '{{\"{name}\": N}}'`"
            )


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DqnkitError("Ape-X runs on Ray, which is not installed: pip install 'dqnkit[ray]'") from None
    return ray


def check_replay(config: Config, env_spaces: tuple[tuple[int, ...], Any, int], actors: int) -> None:
    """Build the replay :class:`ReplayServer` will build, here and at once, so that one this
    machine cannot hold is refused in one line before Ray starts (in the replay actor it
    would be Ray's traceback). The head's memory is the one that counts: the replay runs
    beside the learner. Its pages are never touched here, so this costs no memory."""
    obs_shape, obs_dtype, _ = env_spaces
    replay = ReplayServer.build(config, obs_shape, obs_dtype, actors * config.num_envs)
    check_memory(replay.nbytes, config.buffer_size)


class Apex:
    """One Ape-X run on a connected Ray cluster: start the actors, learn until ``total_steps``
    env steps."""

    def __init__(
        self, config: Config, run_dir: Path, options: ApexOptions, spaces: tuple[tuple[int, ...], np.dtype, int]
    ) -> None:
        """``spaces``: (observation shape, observation dtype, number of actions), as
        :func:`dqnkit.envs.check_env_id` returns them."""
        self.ray = ray = _import_ray()
        self.config, self.run_dir, self.options = config, run_dir, options
        self.algo = DQN(config)  # the replay ratio, target refreshes, evaluations and checkpoints of a run's
        obs_shape, obs_dtype, n_actions = spaces
        self.obs_dtype = obs_dtype  # recorded in checkpoints with the shape
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        # batches arrive read-only from the object store; the learner never writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.agent = build_agent(config, obs_shape, n_actions, obs_dtype=obs_dtype)
        # the replay and the weight store live beside the learner: samples never cross the
        # network, and losing another node cannot lose them
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        names = {kind: f"dqnkit-{kind}-{uuid.uuid4().hex}" for kind in ("replay", "weights")}  # one run's own
        beside = ray.remote(num_cpus=0, scheduling_strategy=here)
        self.replay = (
            beside(ReplayServer)
            .options(name=names["replay"])
            .remote(config, obs_shape, obs_dtype, options.actors * config.num_envs)
        )
        self.store = beside(WeightStore).options(name=names["weights"]).remote()
        self._publish()
        actor_cls = ray.remote(
            num_cpus=1, max_restarts=options.max_restarts, resources=dict(options.actor_resources) or None
        )(ActorWorker)
        self.actors = [
            actor_cls.remote(config, i, options.actors, names["replay"], names["weights"], options.sync_every)
            for i in range(options.actors)
        ]
        self.env_steps, self.episodes, self.restarts, self.stopped = 0, 0, 0, False
        self.eval_step, self.eval_mean, self.eval_std = -1, float("nan"), float("nan")
        self.learner_idle_s = 0.0
        self.actor_nodes: set[str] = set()  # Ray node ids the actors reported from
        self.last_report_s = time.perf_counter()
        # loss and Q summed over the updates since the last logged episode (as in training)
        self.loss_sum, self.q_sum, self.n_losses = torch.zeros(()), torch.zeros(()), 0

    def _publish(self) -> None:
        self.ray.get(self.store.put.remote(self.agent.updates, published_weights(self.agent)))

    def run(self, progress: bool = False, callback: Any = None) -> dict[str, Any]:
        """Train to ``total_steps`` env steps (summed over actors), or until an evaluation
        reaches ``stop_at_return``; returns the summary. Ctrl-C stops collection, saves the
        learner and raises KeyboardInterrupt.

        ``callback(apex)`` runs once per learner iteration (tests use it to kill an actor).
        """
        ray, cfg = self.ray, self.config
        self.monitor = monitor = RunMonitor(cfg, self.run_dir, progress=progress)
        pending: dict[Any, Any] = {}
        sample = None
        try:
            while not self._finished() or pending:
                prev = self.env_steps
                self._dispatch(pending)
                idle = self._owed_updates() < 1  # nothing to learn: block until an actor reports
                waited = time.perf_counter()
                done, _ = (
                    ray.wait(list(pending), num_returns=1 if idle else len(pending), timeout=0.05 if idle else 0)
                    if pending
                    else ([], [])
                )
                if idle and self.env_steps >= cfg.learning_starts:
                    self.learner_idle_s += time.perf_counter() - waited  # starved: waiting for data
                for ref in done:
                    pending.pop(ref)
                    self._record(ref)
                self._check_actors_alive(pending)
                sample = self._learn(sample)
                if self.algo.evaluation_due(prev, self.env_steps) and not self._finished():
                    self._evaluate()
                if self.algo.checkpoint_due(prev, self.env_steps) and not self._finished():
                    self._save()
                if callback is not None:
                    callback(self)
            wall = monitor.wall_s()
            if cfg.final_eval and self.eval_step != self.env_steps and not self.stopped and not monitor.interrupted:
                self._evaluate()  # under the stop flag: Ctrl-C or SIGTERM abandons it, the learner saved
        finally:
            monitor.close()
        if monitor.interrupted:
            self._save()
            raise monitor.stopped(f"the learner is saved in {self.run_dir} (`dqnkit eval {self.run_dir}`)")
        self._save()
        summary = {
            **run_summary(cfg, self.env_steps, self.episodes, self.agent, self.eval_mean, self.eval_std, self.stopped),
            "num_actors": self.options.actors,
            "actor_restarts": self.restarts,
            "actor_nodes": sorted(self.actor_nodes),
            "wall_s": round(wall, 3),
            "sps": round(self.env_steps / wall, 1),
            "learner_updates_per_s": round(self.agent.updates / wall, 1),
            "learner_idle_fraction": round(self.learner_idle_s / wall, 3),
            "replay_bytes_per_slot": round(self.ray.get(self.replay.nbytes.remote()) / cfg.buffer_size, 1),
        }
        return monitor.finish(summary, title=f"Ape-X, {self.options.actors} actors, {cfg.env_id}")

    def _check_actors_alive(self, pending: dict[Any, Any]) -> None:
        """Stop (learner saved) when no actor has reported for ``actor_timeout_s``: their
        node left the cluster and Ray cannot place them anywhere else, or they never started."""
        silent_s = time.perf_counter() - self.last_report_s
        if pending and silent_s > self.options.actor_timeout_s:
            self._save()
            raise DqnkitError(
                f"no Ape-X actor has reported for {silent_s:.0f} s (a node left the cluster, or no node can "
                f"host them); the learner is saved at step {self.env_steps}: `dqnkit eval {self.run_dir}`"
            )

    def _finished(self) -> bool:
        return self.env_steps >= self.config.total_steps or self.stopped or self.monitor.interrupted

    def _dispatch(self, pending: dict[Any, Any]) -> None:
        """Give every idle actor its next batch to collect, unless the learner must catch up."""
        busy = set(pending.values())
        for actor in self.actors:
            if actor not in busy and not self._finished() and not self._learner_behind():
                pending[actor.collect.remote(self.options.send_every)] = actor

    def _record(self, ref: Any) -> None:
        """Count an actor's report and log the episodes it finished."""
        try:
            report = self.ray.get(ref)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError):
            self.restarts += 1  # Ray restarts the actor; its lost batch is not counted
            return
        self.env_steps += report["steps"]
        self.actor_nodes.add(report["node"])
        self.last_report_s = time.perf_counter()
        self.monitor.advance(report["steps"])
        for ret, length in report["episodes"]:
            self.episodes += 1
            loss, q_mean = pop_learning_stats(self, self.env_steps)
            self.monitor.episode(self.env_steps, self.episodes, ret, length, report["epsilon"], loss, q_mean)

    def _owed_updates(self) -> float:
        """Updates the learner is behind single-process training's replay ratio
        (``gradient_steps`` per ``train_freq`` env steps, once ``learning_starts`` are in)."""
        return self.algo.updates_owed(self.env_steps, self.agent.updates)

    def _learner_behind(self) -> bool:
        """Hold the actors back while more than one round of updates is owed."""
        return self._owed_updates() > self.config.gradient_steps

    def _learn(self, sample: Any) -> Any:
        """Up to ``batches_per_request`` updates, the next batches already requested (prefetch)."""
        cfg, count = self.config, self.options.batches_per_request
        owed = int(self._owed_updates())
        if owed < 1:
            return sample
        beta = per_beta(cfg, self.env_steps)
        if sample is None:
            sample = self.replay.sample.remote(cfg.batch_size, beta, count)
        batches = self.ray.get(sample)
        sample = self.replay.sample.remote(cfg.batch_size, beta, count)  # travels while we learn
        priorities = []
        for batch in batches[:owed]:
            stats = self.agent.learn(batch)
            record_learning_stats(self, stats)
            priorities.append((batch.indices, stats.td_abs.cpu().numpy()))
            self._after_update()
        self.replay.update_priorities.remote(priorities)
        return sample

    def _after_update(self) -> None:
        if self.algo.target_sync_after(self.agent.updates):
            self.agent.update_target()
        if self.agent.updates % self.options.publish_every == 0:
            self._publish()

    def _evaluate(self) -> None:
        result = self.monitor.evaluate(self.agent, self.env_steps, self.episodes)
        if result is None:  # abandoned by Ctrl-C or SIGTERM: the run stops, the learner saved
            return
        self.eval_mean, self.eval_std = result
        self.eval_step = self.env_steps
        self.stopped = self.stopped or self.monitor.reached_goal(self.eval_mean)

    def _save(self) -> None:
        check_loss(self.loss_sum, self.env_steps)
        self.monitor.save(self.env_steps, self._snapshot())

    def _snapshot(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "agent": self.agent.state_dict(),
            "spaces": spaces(self.agent, self.obs_dtype),
            "apex": {"env_steps": self.env_steps, "episodes": self.episodes, "actors": self.options.actors},
            "dqnkit_version": __version__,
        }


def run(
    config: Config,
    run_dir: str | Path,
    options: ApexOptions = ApexOptions(),
    *,
    overwrite: bool = False,
    progress: bool = False,
    callback: Any = None,
) -> dict[str, Any]:
    """Ape-X training of ``config`` into ``run_dir`` (the ``dqnkit train`` run-dir contract)."""
    ray = _import_ray()
    if options.actors < 1:
        raise DqnkitError(f"--actors must be at least 1, got {options.actors}")
    if config.algorithm != "dqn":
        raise DqnkitError(f"apex distributes DQN; algorithm={config.algorithm} trains with `dqnkit train`")
    spaces = check_env_id(EnvMaker.from_config(config))  # bad input is refused before the disk is touched
    check_runnable(config)
    check_run_dir(Path(run_dir), overwrite, resumable=False)  # and before Ray starts
    check_replay(config, spaces, options.actors)
    # a local cluster gets one logical CPU per actor, even on a smaller machine
    connect(ray, options.ray_address, max(os.cpu_count() or 1, options.actors), options.connect_timeout_s)
    try:
        _check_resources(ray, dict(options.actor_resources))
        run_dir = Path(run_dir)
        with open_run_dir(config, run_dir, overwrite, resumable=False), flush_denormals(config.flush_denormal):
            return Apex(config, run_dir, options, spaces).run(progress, callback)
    finally:
        ray.shutdown()
