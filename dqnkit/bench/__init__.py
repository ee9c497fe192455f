"""Reproducible benchmarks: each prints a table against its peers, measured in the same
process, and writes the figures as JSON. Run with ``dqnkit bench NAME``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def report(result: dict[str, Any], table: Callable[[dict[str, Any]], None], out: Path | None) -> dict[str, Any]:
    """Print ``result`` with ``table`` and write it to ``out`` as JSON (if given)."""
    table(result)
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    return result


def quiet_sb3(model: Any) -> Any:
    """``model`` with a logger that writes nothing: SB3's default one makes a folder
    ``SB3-<time>`` in the temp directory at every ``learn()``, and leaves it there."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))
    return model
