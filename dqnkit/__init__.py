"""dqnkit: value-based deep RL you can read, trust and run fast.

from dqnkit import Config, train, load, presets
cfg = presets.get("cartpole").replace(seed=1)
summary = train(cfg, run_dir="runs/x")
agent = load("runs/x")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from dqnkit import presets  # noqa: E402
from dqnkit.config import Config  # noqa: E402

if TYPE_CHECKING:
    from dqnkit.build import load
    from dqnkit.training import resume, train, train_in_memory

__all__ = ["Config", "__version__", "load", "presets", "resume", "train", "train_in_memory"]


def __getattr__(name: str) -> Any:
    """``train``, ``train_in_memory``, ``load`` and ``resume`` import torch (about 1 s): imported at first use, so
    that ``dqnkit --help`` and a bad command line answer at once."""
    if name in ("resume", "train", "train_in_memory"):
        from dqnkit import training

        return getattr(training, name)
    if name == "load":
        from dqnkit.build import load

        return load
    raise AttributeError(f"module 'dqnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # tab completion lists the lazy names too
