"""``dqnkit bench NAME``'s command line: which options each bench takes, checked before
any work, and the bench to run with them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

from dqnkit.config import check_range
from dqnkit.errors import DqnkitError

# The options each bench takes besides --out: one table, so that an option given to a bench
# that ignores it is refused before any work starts, with where it applies.
BENCH_OPTIONS: dict[str, tuple[str, ...]] = {
    "replay": ("--seconds", "--capacities"),
    "speed": (),
    "atari": ("--seconds", "--envs"),
    "atari-train": ("--steps", "--envs", "--device", "--compile", "--variant"),
    "apex": ("--actors",),
    "checkpoint": ("--capacities",),
}


def bench_run(args: argparse.Namespace) -> Callable[..., Any]:
    """The bench ``args.name`` with its options checked, to call with ``out=``. Each default
    is tested with ``is None``, not ``or``: a 0 must be refused, not read as the default."""
    for flag in sorted({flag for flags in BENCH_OPTIONS.values() for flag in flags}):
        given = getattr(args, flag[2:].replace("-", "_")) not in (None, False, [])
        if given and flag not in BENCH_OPTIONS[args.name]:
            takers = " and ".join(f"`bench {name}`" for name, flags in BENCH_OPTIONS.items() if flag in flags)
            raise DqnkitError(f"{flag} applies to {takers} only")
    seconds = 2.0 if args.seconds is None else args.seconds
    check_range("--seconds", seconds, 0.0, None, lo_open=True)
    if args.name == "atari-train":
        from dqnkit.bench import atari_train

        steps = 25_000 if args.steps is None else args.steps
        envs = 8 if args.envs is None else args.envs
        check_range("--steps", steps, 1000, None)
        check_range("--envs", envs, 1, None)
        variants = [atari_train.check_variant(pair, steps) for pair in args.variant]
        device = args.device or "auto"
        return partial(
            atari_train.run, steps=steps, envs=envs, device=device, compile_update=args.compile, variants=variants
        )
    if args.name == "atari":
        from dqnkit.bench import atari

        envs = 4 if args.envs is None else args.envs
        check_range("--envs", envs, 1, None)
        return partial(atari.run, seconds=seconds, envs=envs)
    if args.name == "apex":
        from dqnkit.bench import apex

        return partial(apex.run, actors=_counts("--actors", "1,2" if args.actors is None else args.actors))
    if args.name == "checkpoint":
        from dqnkit.bench import checkpoint

        capacity = _counts("--capacities", "1000000" if args.capacities is None else args.capacities)
        if len(capacity) != 1 or capacity[0] < 20_000:
            raise DqnkitError("bench checkpoint takes one capacity of at least 20000 (--capacities 1000000)")
        return partial(checkpoint.run, capacity=capacity[0])
    if args.name == "speed":
        from dqnkit.bench import speed

        return speed.run
    from dqnkit.bench import replay

    sizes = {} if args.capacities is None else {"capacities": _counts("--capacities", args.capacities, least=256)}
    return partial(replay.run, seconds=seconds, **sizes)


def _counts(flag: str, text: str, least: int = 1) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4), each at least ``least``."""
    try:
        counts = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise DqnkitError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if min(counts) < least:
        raise DqnkitError(f"{flag} must each be at least {least}, got {text!r}")
    return counts
