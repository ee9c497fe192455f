"""dqnkit: value-based deep RL you can read, trust and run fast.

from dqnkit import Config, train, load, presets
cfg = presets.get("cartpole").replace(seed=1)
summary = train(cfg, run_dir="runs/x")
agent = load("runs/x")
"""

__version__ = "0.1.0"

from dqnkit import presets  # noqa: E402
from dqnkit.config import Config  # noqa: E402
from dqnkit.training import load, resume, train  # noqa: E402

__all__ = ["Config", "__version__", "load", "presets", "resume", "train"]
