"""A trained agent as a file that plays without dqnkit: ONNX (onnxruntime) or TorchScript.

The exported function is the agent's greedy Q-function, ``obs [B, *obs_shape]`` in the env's
own dtype (uint8 frames for Atari and MinAtar, float32 vectors otherwise) -> ``Q [B, A]``
float32, with a dynamic batch size. It does what the agent does: the network's own input
scaling (Atari frames / 255), the mean of each action's distribution for C51 and QR-DQN,
and noisy layers with their mean weights (the noise off, as evaluation plays).

Every file is checked after it is written: it is loaded (onnxruntime, or ``torch.jit.load``)
and compared with the agent on observations of random play in the run's env
(:func:`check_export`). A file that does not match is deleted.

Shape legend: B batch, A actions, N checked observations.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dqnkit import __version__
from dqnkit.agent import QAgent
from dqnkit.envs import EnvMaker
from dqnkit.errors import DqnkitError
from dqnkit.files import atomic_write

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> the file suffix it writes
INPUT_NAME, OUTPUT_NAME = "obs", "q_values"

# The check's tolerance: |Q_file - Q_agent| <= RTOL * max(|Q_agent|, Q_FLOOR) for every
# observation and action. 1e-4 relative where |Q| >= 0.1; below that an absolute 1e-5, since
# a relative difference of a Q-value near 0 says nothing. float32 kernels that sum in
# another order differ by about 1e-7 relative, so a real fault (a missing scaling, a head
# left out, noise left on) is far above it.
RTOL, Q_FLOOR = 1e-4, 0.1
CHECK_OBSERVATIONS = 256


class ExportMismatch(Exception):
    """The exported file does not compute what the agent computes (it has been deleted)."""


@dataclass(frozen=True)
class CheckResult:
    """How an exported file compares with the agent on ``observations`` observations."""

    observations: int
    max_abs: float  # the largest |Q_file - Q_agent|
    max_rel: float  # the largest |Q_file - Q_agent| / max(|Q_agent|, Q_FLOOR)
    near_ties: int  # observations whose best two Q-values lie within the tolerance: argmax may differ
    actions_differ: int  # greedy actions that differ, near ties left out
    worst: str  # the largest difference, in words

    @property
    def ok(self) -> bool:
        """Every Q-value within the tolerance and every greedy action equal (but at near ties)."""
        return self.max_rel <= RTOL and self.actions_differ == 0

    def summary(self) -> str:
        """One line: what was compared and how far apart."""
        verdict = "greedy actions equal" if self.ok else "MISMATCH"
        ties = f" ({self.near_ties} near ties)" if self.near_ties else ""
        return (
            f"{self.observations} observations of random play: {verdict}{ties}; Q-values max abs difference "
            f"{self.max_abs:.2g}, max relative {self.max_rel:.2g} (tolerance {RTOL:g} of max(|Q|, {Q_FLOOR:g}))"
        )


class QFunction(nn.Module):
    """An agent's greedy Q-function as one module: observations [B, *obs] in the env's dtype
    -> Q [B, A] float32. The network scales its own input (``prepare``); a distributional
    head's output becomes each action's mean here. A copy of the agent's network, in eval
    mode (noisy layers use their mean weights), on the CPU."""

    def __init__(self, agent: QAgent) -> None:
        super().__init__()
        self.q_net = copy.deepcopy(agent.q_net).cpu()
        self.expected = agent.head.expected
        self.register_buffer("support", agent.support.detach().cpu().clone())
        self.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, *obs] -> [B, A] float32."""
        return self.expected(self.q_net(obs), self.support).float()


def metadata(agent: QAgent, obs_dtype: np.dtype) -> dict[str, str]:
    """What an exported file says of itself (ONNX metadata_props; TorchScript's ``dqnkit.json``)."""
    cfg = agent.config
    return {
        "env_id": cfg.env_id,
        "obs_shape": json.dumps(list(agent.obs_shape)),
        "obs_dtype": np.dtype(obs_dtype).name,
        "n_actions": str(agent.n_actions),
        "preset": cfg.preset,
        "algorithm": cfg.algorithm,
        "distributional": cfg.distributional,
        "repeat_action_probability": str(cfg.repeat_action_probability),
        "max_episode_steps": str(cfg.max_episode_steps),
        "env_kwargs": json.dumps(cfg.env_kwargs),
        "pixels": json.dumps(
            {"pixel_size": cfg.pixel_size, "grayscale": cfg.grayscale, "frame_stack": cfg.frame_stack}
        ),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dqnkit_version": __version__,
    }


def require_onnx() -> None:
    """Refuse (exit 2) where onnx, onnxscript (torch's ONNX exporter) or onnxruntime is missing."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise DqnkitError(f"exporting to ONNX needs {' and '.join(missing)}: pip install 'dqnkit[export]'")


def export(agent: QAgent, path: str | Path, fmt: str = "onnx", seed: int = 0) -> CheckResult:
    """Write ``agent``'s Q-function to ``path`` as ``fmt`` (``onnx`` or ``torchscript``), then
    check the file against the agent (:func:`check_export`). A file that does not match is
    deleted and :class:`ExportMismatch` raised, naming the largest difference."""
    path = Path(path)
    observations = random_play(agent, CHECK_OBSERVATIONS, seed)
    module = QFunction(agent)
    example = torch.as_tensor(observations[:2])
    if fmt == "onnx":
        write_onnx(module, example, path, metadata(agent, observations.dtype))
    elif fmt == "torchscript":
        write_torchscript(module, example, path, metadata(agent, observations.dtype))
    else:
        raise DqnkitError(f"unknown export format {fmt!r}; the formats: {', '.join(FORMATS)}")
    result = check_export(agent, load_exported(path, fmt), observations)
    if not result.ok:
        path.unlink(missing_ok=True)
        raise ExportMismatch(f"{path} does not match the agent, deleted: {result.worst}")
    return result


def write_onnx(module: QFunction, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    """``module`` as an ONNX file with a dynamic batch axis and ``meta`` in its metadata_props.

    torch.onnx's torch.export-based exporter (``dynamo=True``, the default since torch 2.9;
    it needs onnxscript). The TorchScript-based one (``dynamo=False``) also works offline and
    exports in a fraction of the time, but torch 2.13 deprecates it and warns it will be removed.
    """
    import onnx

    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, meta)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def write_torchscript(module: QFunction, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    """``module`` traced (``torch.jit.trace``) and saved with ``meta`` as its ``dqnkit.json``
    extra file (``torch.jit.load(path, _extra_files={"dqnkit.json": ""})`` reads it back)."""
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, which is what was asked for
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example)
        extra = {"dqnkit.json": json.dumps(meta)}
        atomic_write(path, lambda f: torch.jit.save(traced, f, _extra_files=extra))


def load_exported(path: Path, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """The exported file as a function observations [B, *obs] -> Q [B, A], as a user runs it:
    an onnxruntime session on the CPU, or the module ``torch.jit.load`` reads."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda obs: session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")

    def run(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.as_tensor(obs)).numpy()

    return run


def random_play(agent: QAgent, n: int = CHECK_OBSERVATIONS, seed: int = 0) -> np.ndarray:
    """``n`` observations [N, *obs] of the run's env (as evaluation makes it) under uniformly
    random actions, seeded; a new episode starts where one ends."""
    cfg = agent.config
    env = EnvMaker.from_config(cfg).make()
    rng = np.random.default_rng(seed)
    try:
        space = env.observation_space
        observations = np.empty((n, *space.shape), dtype=space.dtype)
        obs, _ = env.reset(seed=seed)
        for i in range(n):
            observations[i] = obs
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(agent.n_actions)))
            if terminated or truncated:
                obs, _ = env.reset()
    finally:
        env.close()
    return observations


def check_export(agent: QAgent, run: Callable[[np.ndarray], np.ndarray], observations: np.ndarray) -> CheckResult:
    """Compare the exported function ``run`` with ``agent`` on ``observations`` [N, *obs]
    (all at once, and the first alone: the batch size is dynamic). Q-values must agree within
    ``RTOL * max(|Q|, Q_FLOOR)``; greedy actions must be equal, but where the agent's best two
    Q-values are within twice that of each other (a near tie, which either may break)."""
    with agent.evaluation():  # noisy layers: mean weights, as evaluation plays
        q_ref = agent.q_values(observations)  # [N, A]
        actions_ref = agent.act(observations, greedy=True, rng=np.random.default_rng(0))  # [N]
    q_all, q_one = run(observations), run(observations[:1])
    for q in (q_all, q_one):
        if q.dtype != np.float32 or q.shape[1:] != q_ref.shape[1:]:
            raise ExportMismatch(f"the exported function returns {q.dtype} {list(q.shape)}, not float32 [B, A]")
    q_out = np.concatenate([q_all, q_one])  # [N + 1, A]
    q_ref = np.concatenate([q_ref, q_ref[:1]])
    diff = np.abs(q_out.astype(np.float64) - q_ref)
    scale = np.maximum(np.abs(q_ref), Q_FLOOR)
    rel = diff / scale
    top2 = np.sort(q_ref[:-1], axis=1)[:, -2:] if q_ref.shape[1] > 1 else None
    near_tie = np.zeros(len(observations), bool)
    if top2 is not None:
        near_tie = top2[:, 1] - top2[:, 0] <= 2 * RTOL * np.maximum(np.abs(top2[:, 1]), Q_FLOOR)
    actions_out = q_all.argmax(axis=1)
    wrong = np.flatnonzero((actions_out != actions_ref) & ~near_tie)
    i, a = np.unravel_index(int(rel.argmax()), rel.shape)
    which = "observation 0 alone (a batch of 1)" if i == len(observations) else f"observation {i}"
    worst = (
        f"Q-value of action {a} for {which}: agent {q_ref[i, a]:.7g}, file {q_out[i, a]:.7g} "
        f"(abs {diff[i, a]:.2g}, relative {rel[i, a]:.2g})"
    )
    if len(wrong) and rel.max() <= RTOL:
        j = int(wrong[0])
        worst = (
            f"greedy action for observation {j}: agent {actions_ref[j]}, file {actions_out[j]} ({len(wrong)} differ)"
        )
    return CheckResult(len(observations), float(diff.max()), float(rel.max()), int(near_tie.sum()), len(wrong), worst)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's exporter without its progress lines and its warnings about packages it
    can do without (torchvision's ops) or deprecations in its own code: the command's
    output is what it wrote and how it checked."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)
