"""Named starting points for a run. ``get(name, **overrides)`` returns a validated Config."""

from __future__ import annotations

from typing import Any

from dqnkit.config import Config, from_dict
from dqnkit.envs import EnvMaker, env_family
from dqnkit.errors import ConfigError

# Chosen by a sweep over 5 seeds (README, "How the preset was chosen"): bursts of 64 updates
# every 64 steps with the target synced after each burst, Double DQN.
_CARTPOLE: dict[str, Any] = dict(
    env_id="CartPole-v1",
    total_steps=50_000,
    lr=1e-3,
    batch_size=64,
    buffer_size=50_000,
    learning_starts=1000,
    train_freq=64,
    gradient_steps=64,
    target_update_interval=64,
    double=True,
    loss="huber",
    max_grad_norm=10.0,
    hidden_sizes=(128, 128),
    exploration_steps=5000,
    eps_end=0.02,
    eval_every=1000,
    eval_episodes=10,
    stop_at_return=475.0,
)

# Mnih et al. 2015 as CleanRL's dqn_atari.py runs it (Adam instead of RMSProp), Huber loss.
_ATARI: dict[str, Any] = dict(
    env_id="ALE/Breakout-v5",
    total_steps=10_000_000,
    lr=1e-4,
    buffer_size=1_000_000,
    batch_size=32,
    learning_starts=80_000,
    train_freq=4,
    gradient_steps=1,
    target_update_interval=1000,
    gamma=0.99,
    eps_start=1.0,
    eps_end=0.01,
    exploration_fraction=0.1,
    exploration_steps=1_000_000,
    loss="huber",
    max_grad_norm=10.0,
    eval_every=250_000,
    eval_episodes=10,
    eval_epsilon=0.05,
    checkpoint_every=1_000_000,
    num_threads=0,
)

# Any other env whose observations are images: the Nature DQN on gray 84x84 frames, stacked,
# with a shorter schedule and replay than Atari's (most such envs are not 10M-step games).
_PIXELS: dict[str, Any] = dict(
    env_id="CarRacing-v3",
    env_kwargs={"continuous": False},
    pixel_size=84,
    grayscale=True,
    frame_stack=4,
    total_steps=1_000_000,
    lr=1e-4,
    buffer_size=100_000,
    batch_size=32,
    learning_starts=10_000,
    train_freq=4,
    gradient_steps=1,
    target_update_interval=1000,
    gamma=0.99,
    eps_start=1.0,
    eps_end=0.05,
    exploration_steps=100_000,
    loss="huber",
    max_grad_norm=10.0,
    eval_every=50_000,
    eval_episodes=5,
    checkpoint_every=100_000,
    num_threads=0,
)

# PQN (Gallici et al. 2025): no replay, no target network, LayerNorm; every key below is
# one PQN reads (a dqn key set here would be refused).
_PQN: dict[str, Any] = dict(
    algorithm="pqn",
    layer_norm=True,
    loss="mse",
    max_grad_norm=10.0,
    gamma=0.99,
    q_lambda=0.65,
    update_epochs=4,
    anneal_lr=True,
    eps_start=1.0,
)

# name -> (one-line description, overrides of Config's defaults)
_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "cartpole": (
        "dqnkit's fastest reliable CartPole-v1 solver (stops once greedy eval reaches 475)",
        _CARTPOLE,
    ),
    "cartpole-rainbow": (
        "cartpole plus prioritized replay, 3-step returns and a dueling head (Rainbow without noisy nets / C51)",
        {**_CARTPOLE, "dueling": True, "prioritized": True, "n_step": 3, "per_alpha": 0.6, "per_beta": 0.4},
    ),
    "cartpole-c51": (
        "cartpole with a C51 head: 51 atoms on [0, 100] (CartPole's discounted returns), cross-entropy loss",
        {**_CARTPOLE, "distributional": "c51", "n_atoms": 51, "v_min": 0.0, "v_max": 100.0},
    ),
    "cartpole-qr": (
        "cartpole with a QR-DQN head: 50 quantiles, quantile Huber loss",
        {**_CARTPOLE, "distributional": "qr", "n_atoms": 50},
    ),
    "cartpole-zoo": (
        "rl-baselines3-zoo's DQN settings for CartPole-v1 (for side-by-side comparison with SB3)",
        dict(
            env_id="CartPole-v1",
            total_steps=50_000,
            lr=2.3e-3,
            batch_size=64,
            buffer_size=100_000,
            learning_starts=1000,
            gamma=0.99,
            target_update_interval=10,
            train_freq=256,
            gradient_steps=128,
            exploration_fraction=0.16,
            eps_start=1.0,
            eps_end=0.04,
            hidden_sizes=(256, 256),
            loss="huber",
            max_grad_norm=10.0,
            eval_every=10_000,
        ),
    ),
    "cartpole-cleanrl": (
        "CleanRL dqn.py's defaults on CartPole-v1 over 100k steps (120x84 MLP, MSE, few updates: "
        "one per 10 steps), for speed comparisons",
        dict(
            env_id="CartPole-v1",
            total_steps=100_000,
            lr=2.5e-4,
            batch_size=128,
            buffer_size=10_000,
            learning_starts=10_000,
            gamma=0.99,
            target_update_interval=500,
            train_freq=10,
            gradient_steps=1,
            exploration_fraction=0.5,
            exploration_steps=0,
            eps_start=1.0,
            eps_end=0.05,
            hidden_sizes=(120, 84),
            loss="mse",
            max_grad_norm=0.0,
            double=False,
            eval_every=0,
            stop_at_return=None,
        ),
    ),
    "cartpole-lesson": (
        "the lesson's DQNAgent: 128-unit MLP, Adam 1e-3, MSE, clip 1.0, eps*0.995 per update, "
        "target copy every 1000 steps",
        dict(
            env_id="CartPole-v1",
            total_steps=100_000,
            hidden_sizes=(128,),
            lr=1e-3,
            gamma=0.99,
            batch_size=64,
            buffer_size=100_000,
            learning_starts=64,
            train_freq=1,
            gradient_steps=1,
            loss="mse",
            max_grad_norm=1.0,
            eps_schedule="exponential",
            eps_start=1.0,
            eps_end=0.01,
            eps_decay=0.995,
            target_update_interval=1000,
            tau=0.0,
            double=False,
        ),
    ),
    "atari": (
        "Nature DQN on Atari pixels (CleanRL's dqn_atari settings; Breakout unless --env ALE/<Game>-v5)",
        _ATARI,
    ),
    "atari-double-dueling": (
        "atari plus Double DQN and a dueling head",
        {**_ATARI, "double": True, "dueling": True},
    ),
    "atari-rainbow": (
        "Rainbow (Hessel et al. 2018): noisy, dueling, Double, C51 on [-10, 10], 3-step, PER alpha 0.5, "
        "Adam 6.25e-5, target every 32k frames",
        {
            **_ATARI,
            "eps_start": None,
            "noisy": True,
            "dueling": True,
            "double": True,
            "distributional": "c51",
            "n_atoms": 51,
            "v_min": -10.0,
            "v_max": 10.0,
            "n_step": 3,
            "prioritized": True,
            "per_alpha": 0.5,
            "per_beta": 0.4,
            "per_beta_final": 1.0,
            "lr": 6.25e-5,
            "adam_eps": 1.5e-4,
            "target_update_interval": 8000,
            "learning_starts": 20_000,
        },
    ),
    "pixels": (
        "Nature DQN for any env with image observations: gray 84x84 frames, 4 stacked, replay 100k "
        "(CarRacing-v3 with continuous=false unless --env)",
        _PIXELS,
    ),
    "minatar": (
        "Young & Tian's MinAtar DQN (small CNN, replay 100k, eps 1 -> 0.1 over 100k steps; Adam for RMSProp)",
        dict(
            env_id="MinAtar/Breakout",
            total_steps=5_000_000,
            lr=2.5e-4,
            adam_eps=3.125e-4,
            batch_size=32,
            buffer_size=100_000,
            learning_starts=5000,
            train_freq=1,
            gradient_steps=1,
            target_update_interval=1000,
            gamma=0.99,
            eps_start=1.0,
            eps_end=0.1,
            exploration_steps=100_000,
            loss="huber",
            max_grad_norm=10.0,
            eval_every=50_000,
            eval_episodes=10,
            eval_epsilon=0.0,
        ),
    ),
    "pqn-cartpole": (
        "PQN on CartPole-v1: 8 envs x 64 steps, 8 minibatches x 4 epochs, RAdam 1e-3 annealed, "
        "lambda 0.65, LayerNorm 120x84 MLP (stops once greedy eval reaches 475)",
        {
            **_PQN,
            "env_id": "CartPole-v1",
            "total_steps": 500_000,
            "num_envs": 8,
            "rollout_steps": 64,
            "num_minibatches": 8,
            "lr": 1e-3,
            "hidden_sizes": (120, 84),
            "eps_end": 0.05,
            "exploration_steps": 50_000,
            "eval_every": 10_000,
            "eval_episodes": 10,
            "stop_at_return": 475.0,
        },
    ),
    "pqn-minatar": (
        "PQN on MinAtar: the minatar CNN with LayerNorm, 32 envs x 32 steps, 8 minibatches x 4 epochs, "
        "RAdam 1e-3 annealed, lambda 0.65, eps 1 -> 0.01 over 100k steps (as long as minatar's)",
        {
            **_PQN,
            "env_id": "MinAtar/Breakout",
            "total_steps": 5_000_000,
            "num_envs": 32,
            "rollout_steps": 32,
            "num_minibatches": 8,
            "lr": 1e-3,
            "eps_end": 0.01,
            "exploration_steps": 100_000,
            "eval_every": 50_000,
            "eval_episodes": 10,
        },
    ),
    "pqn-atari": (
        "CleanRL's pqn_atari_envpool.py: 8 envs x 128 steps, 4 minibatches x 4 epochs, RAdam 2.5e-4 "
        "annealed, lambda 0.65, eps 1 -> 0.01 over 10%, LayerNorm Nature CNN, 10M steps",
        {
            **_PQN,
            "env_id": "ALE/Breakout-v5",
            "total_steps": 10_000_000,
            "num_envs": 8,
            "rollout_steps": 128,
            "num_minibatches": 4,
            "lr": 2.5e-4,
            "eps_end": 0.01,
            "exploration_fraction": 0.1,
            "eval_every": 250_000,
            "eval_episodes": 10,
            "eval_epsilon": 0.05,
            "checkpoint_every": 1_000_000,
            "num_threads": 0,
        },
    ),
}


def names() -> list[str]:
    """All preset names, in the order `dqnkit presets` lists them."""
    return list(_PRESETS)


def describe(name: str) -> str:
    """The preset's one-line description."""
    return _lookup(name)[0]


def for_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str:
    """The preset of ``env_id``'s family: ``atari`` for ALE ids, ``minatar`` for MinAtar ids,
    ``pixels`` (a CNN) for another env whose observations are images (made once with
    ``env_kwargs`` to see), ``cartpole`` (a small MLP) for any other env."""
    family = env_family(env_id)
    if family != "vector":
        return family
    return "pixels" if EnvMaker(env_id, dict(env_kwargs or {})).shows_images() else "cartpole"


def get(name: str, **overrides: Any) -> Config:
    """The preset ``name`` with ``overrides`` applied, validated. The preset's ``env_kwargs``
    go with its env: another ``env_id`` starts without them."""
    _, values = _lookup(name)
    if overrides.get("env_id", values.get("env_id")) != values.get("env_id"):
        values = {k: v for k, v in values.items() if k != "env_kwargs"}  # the preset's env's own arguments
    return from_dict({**values, "preset": name, **overrides})


def _lookup(name: str) -> tuple[str, dict[str, Any]]:
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(_PRESETS)}")
    return _PRESETS[name]


__all__ = ["Config", "get", "names", "describe", "for_env"]
