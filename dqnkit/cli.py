"""``dqnkit`` command line: parses, validates, calls the library. No logic of its own.

Exit codes: 0 ok, 2 bad input (one line ``error: ...`` on stderr, no traceback),
1 an unexpected failure (traceback) or a write the disk refused (one line),
130 interrupted by Ctrl-C, 143 by SIGTERM (a run saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from dqnkit.config import check_range
from dqnkit.errors import DqnkitError, Interrupted, sigterm_raises
from dqnkit.files import json_text, make_dir, read_json_file, refuse_file_in_the_way

# dqnkit.experiments imports matplotlib: the parser names them without importing it (a test
# keeps this list equal to experiments.EXPERIMENTS)
EXPERIMENT_NAMES = ("target-ablation", "soft-vs-hard", "overestimation", "rainbow-ablation", "pqn-vs-dqn")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise DqnkitError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The ``dqnkit`` argument parser: one subcommand per function below."""
    from dqnkit.config import describe_fields

    keys = "\n".join(f"  {name} ({kind}): {help}" for name, kind, help in describe_fields())
    parser = _Parser(prog="dqnkit", description="Value-based deep RL: DQN and its family, readable and fast.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    train = sub.add_parser(
        "train",
        help="train an agent (or continue one with --resume)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys for --set:\n" + keys,
    )
    _add_run_args(train, default_dir="runs/<preset>-s<seed>-<time>")
    train.add_argument("--resume", type=Path, metavar="DIR",
                       help="continue the run in DIR from its latest checkpoint (--steps, --device and --set of run "
                       "settings such as eval_every may change on the way)")  # fmt: skip

    apex = sub.add_parser(
        "apex",
        help="Ape-X: distributed actors, a prioritized replay and a learner on Ray",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys for --set: as for `dqnkit train`",
    )
    _add_run_args(apex, default_dir="runs/apex-<preset>-s<seed>-<time>")
    apex.add_argument("--actors", type=int, default=2, help="actor processes (default 2)")
    apex.add_argument("--ray-address", help="join this Ray cluster (`auto` or host:port); default: start a local one")
    apex.add_argument("--ray-timeout", type=float, default=10.0, help="seconds to wait to join --ray-address (10)")
    apex.add_argument("--actor-resource", action="append", default=[], metavar="NAME[=AMOUNT]",
                      help="a custom Ray resource each actor needs (actors go to nodes that offer it)")  # fmt: skip
    apex.add_argument("--actor-timeout", type=float, default=120.0,
                      help="stop, learner saved, when no actor has reported for this many seconds (120)")  # fmt: skip

    ev = sub.add_parser("eval", help="play episodes with a trained run's agent (greedy but for its eval_epsilon)")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=12345, help="seed of the first episode")
    ev.add_argument("--epsilon", type=float, help="exploration rate while playing (default: the run's eval_epsilon)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where the agent plays (default auto: cuda if here), whatever it trained on")  # fmt: skip
    ev.add_argument("--video", type=Path, help="also film one episode into this .gif, or .mp4 (needs dqnkit[video])")
    ev.add_argument("--video-max-steps", type=_steps, metavar="N",
                    help="end the film after N steps if the episode has not ended (default: the run's "
                    "video_max_steps; 0 there: five minutes of playback)")  # fmt: skip

    ex = sub.add_parser("export", help="a run's Q-network as an ONNX (or TorchScript) file, checked against the agent")
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ex.add_argument("--out", type=Path, metavar="FILE",
                    help="the file to write (default RUN_DIR/policy.onnx, or policy.pt for torchscript)")  # fmt: skip
    ex.add_argument("--checkpoint", metavar="step_N.pt",
                    help="one of the run's checkpoints (default: the latest)")  # fmt: skip
    ex.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx",
                    help="onnx (for onnxruntime; needs dqnkit[export]) or torchscript (torch.jit.load)")  # fmt: skip
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    plot = sub.add_parser("plot", help="the learning curves of several runs in one PNG (seeds of a variant together)")
    plot.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                      help="run directories (runs/*), or directories of runs (runs/, an experiment)")  # fmt: skip
    plot.add_argument("--out", type=Path, default=Path("compare.png"), help="the PNG to write (default compare.png)")

    pr = sub.add_parser("presets", help="list presets, or print one preset's full config")
    pr.add_argument("name", nargs="?")

    exp = sub.add_parser("experiment", help="the lesson's experiments over several seeds, with plots")
    exp.add_argument("name", choices=EXPERIMENT_NAMES)
    exp.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    exp.add_argument("--steps", type=_steps, help="environment steps per run (default: the experiment's)")
    exp.add_argument("--out", type=Path, help="output directory (default runs/experiment-NAME)")
    exp.add_argument("--jobs", type=int, help="parallel training processes (default: number of cores)")
    exp.add_argument("--overwrite", action="store_true",
                     help="replace results already in --out and train every run again (without it, the runs an "
                     "interrupted start left are kept or resumed)")  # fmt: skip

    bench = sub.add_parser("bench", help="benchmarks against peers, measured in the same run (table + JSON)")
    bench.add_argument("name", choices=("replay", "speed", "atari", "atari-train", "apex", "checkpoint"))
    bench.add_argument("--out", type=Path, help="JSON file to write (default bench-results/NAME.json)")
    bench.add_argument("--seconds", type=float, help="replay, atari: time per contender and size (default 2)")
    bench.add_argument(
        "--capacities", help="comma-separated replay sizes (default 10000,100000,1000000; checkpoint: one, 1000000)"
    )
    bench.add_argument("--steps", type=_steps, help="atari-train: env steps per run (default 25000)")
    bench.add_argument(
        "--envs", type=int, help="atari-train: envs of the second row (default 8); atari: its vector rows (default 4)"
    )
    bench.add_argument("--actors", help="apex: comma-separated actor counts (default 1,2)")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), help="atari-train: torch device (default auto)")
    bench.add_argument(
        "--compile",
        action="store_true",
        help="atari-train: also time the update through torch.compile(mode='reduce-overhead') (compiles first)",
    )
    bench.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="atari-train: also train dqnkit with --envs envs and this one config change, in the same run "
        "(repeatable; e.g. frame_gather=host)",
    )

    tune = sub.add_parser(
        "tune",
        help="hyperparameter search on Optuna: TPE, median pruning, every trial a run (needs dqnkit[tune])",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="the same command started again continues the study (see docs/tune.md)",
    )
    tune.add_argument("--preset", default=None, help="starting config (`dqnkit presets`; default: --env's family)")
    tune.add_argument("--env", dest="env_id", help="gymnasium env id, e.g. CartPole-v1")
    tune.add_argument("--trials", type=int, default=40, help="trials in the study in total, over all workers (40)")
    tune.add_argument("--jobs", type=int, default=1, help="trials side by side on this machine, in processes (1)")
    tune.add_argument("--steps", type=_steps, help="each trial's budget in env steps (default: the preset's)")
    tune.add_argument("--storage", metavar="URL",
                      help="Optuna storage: postgresql://... for many machines (default: SQLite in --out)")  # fmt: skip
    tune.add_argument("--study", help="study name in --storage (default: the preset's name)")
    tune.add_argument("--space", type=Path, metavar="FILE.json", help="search space (default: the algorithm's own)")
    tune.add_argument("--out", type=Path, help="where the trials' runs and the results go (default runs/tune-PRESET)")
    tune.add_argument("--confirm", type=int, default=5, metavar="K",
                      help="train best and preset on K fresh seeds, compared by IQM (5; 0 skips)")  # fmt: skip
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="a config key every trial keeps, not searched (repeatable)")  # fmt: skip
    tune.add_argument("--device", choices=("auto", "cpu", "cuda"), help="the trials' torch device (default auto)")
    tune.set_defaults(config=None, seed=None)

    tab = sub.add_parser("tabular", help="tabular TD exercises: cliff-walking, random-walk")
    tab.add_argument("name", choices=("cliff-walking", "random-walk"))
    tab.add_argument("--episodes", type=int, help="episodes per seed (default 500 / 10)")
    tab.add_argument("--alpha", type=float, help="step size (default 0.5 / 0.1)")
    tab.add_argument("--epsilon", type=float, help="exploration rate (cliff-walking; default 0.1)")
    tab.add_argument("--seeds", type=int, default=20, help="independent runs to average (default 20)")
    tab.add_argument("--out", type=Path, help="output directory (default runs/tabular-NAME)")
    tab.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    tab.add_argument("--json", action="store_true", help="print results.json's content instead of a table")
    return parser


def _add_run_args(parser: argparse.ArgumentParser, default_dir: str) -> None:
    """The options `train` and `apex` share: what to train, where, and what to print."""
    parser.add_argument("--preset", default=None, help="starting config (`dqnkit presets`; default: --env's family)")
    parser.add_argument("--config", type=Path, metavar="FILE.json",
                        help="config keys from a JSON file, e.g. a run's config.json (over the preset; "
                        "--env, --seed, --steps, --device and --set go over it)")  # fmt: skip
    parser.add_argument("--env", dest="env_id", help="gymnasium env id, e.g. CartPole-v1")
    parser.add_argument("--env-kwarg", dest="env_kwargs", action="append", default=[], metavar="KEY=VALUE",
                        help="an argument for gymnasium.make, e.g. continuous=false (repeatable; JSON values; "
                        "goes into env_kwargs)")  # fmt: skip
    parser.add_argument("--steps", type=_steps, help="total environment steps (summed over envs and actors; 1e6 reads)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="the learner's torch device (default auto)")
    parser.add_argument("--run-dir", type=Path, help=f"where to write the run (default {default_dir})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --run-dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the run's summary as JSON at the end")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config these options give, as JSON (a --config file), and exit")  # fmt: skip


def _steps(text: str) -> int:
    """A step count as ``--set total_steps=`` reads one: 1000000, 1_000_000 or 1e6."""
    from dqnkit.config import parse_int

    try:
        return parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (1000000, 1_000_000 or 1e6), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit code (0; 1 the disk refused a write;
    2 bad input; 130 or 143 interrupted by SIGINT or SIGTERM)."""
    args = None
    try:
        # SIGTERM (`kill`, `timeout`, a scheduler) stops any command as Ctrl-C does, closing
        # what is open on the way out; a run's own handler takes both over to save first.
        # (Without it, where SDL had started, SDL caught SIGTERM and the process went on.)
        with sigterm_raises():
            args = build_parser().parse_args(argv)
            if args.version:
                from dqnkit import __version__

                print(__version__)
                return 0
            if args.command is None:
                raise DqnkitError(
                    "missing command: train, eval, export, plot, presets, experiment, tune, tabular, bench or apex "
                    "(see `dqnkit --help`)"
                )
            return COMMANDS[args.command](args)
    except DqnkitError as exc:
        print(f"error: {cli_terms(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        hint = ""
        if args is not None and args.command == "train":  # a failed checkpoint never replaces the last good one
            hint = "; the run keeps its last complete checkpoint: `dqnkit train --resume RUN_DIR` continues it"
        print(f"error: {exc.strerror}{where}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # a run saved first (errors.Interrupted), or Ctrl-C elsewhere
        print(f"\n{str(exc) or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


# The library's errors name what a Python caller passes (`overwrite=True`); the command line
# says the flag that does the same. Only these backquoted terms are rewritten.
_CLI_TERMS = (
    (re.compile(r"`overwrite=True`"), "--overwrite"),
    (re.compile(r"`run_dir`"), "--run-dir"),
    (re.compile(r"`total_steps`"), "--steps"),
    (re.compile(r"`resume\(([^)]*)\)`"), r"`dqnkit train --resume \1`"),
    (re.compile(r'`device="(\w+)"`'), r"--device \1"),
    (re.compile(r"`(\w+)=([^`\s]+)`"), r"--set \1=\2"),  # any other config key
)


def cli_terms(message: str) -> str:
    """``message`` with its Python terms as the command line's flags."""
    for pattern, flag in _CLI_TERMS:
        message = pattern.sub(flag, message)
    return message


# The disk refused a write (full, over quota, read-only, not permitted): one line, not a traceback.
_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def _train(args: argparse.Namespace) -> int:
    # dqnkit.training imports torch (about 1 s): only once the command line is known to be good
    if args.resume is not None:
        given = [
            flag
            for flag, value in (
                ("--preset", args.preset),
                ("--config", args.config),
                ("--env", args.env_id),
                ("--env-kwarg", args.env_kwargs),
                ("--seed", args.seed),
                ("--run-dir", args.run_dir),
                ("--print-config", args.print_config),
            )
            if value
        ]
        if given:
            raise DqnkitError(f"--resume continues the run with its own config; drop {', '.join(given)}")
        if args.steps is not None and args.steps < 1:
            raise DqnkitError(f"--steps must be positive, got {args.steps}")
        from dqnkit.config import parse_overrides

        changes = parse_overrides(args.overrides)  # run settings only: resume refuses the rest
        if args.device is not None:
            changes["device"] = args.device
        run_dir = args.resume
        from dqnkit.training import resume

        summary = resume(run_dir, args.steps, progress=not args.quiet, changes=changes)
    else:
        config = _config(args)
        if args.print_config:
            print(config.to_json())
            return 0
        from dqnkit.monitor import default_run_dir
        from dqnkit.training import train

        run_dir = args.run_dir or default_run_dir(config)
        summary = train(config, run_dir, overwrite=args.overwrite, progress=not args.quiet)
    _report(summary, run_dir, args.json)
    return 0


def _report(summary: dict[str, Any], run_dir: Path, as_json: bool) -> None:
    """The end of a run: its summary as JSON, or what a person wants to read next."""
    if as_json:
        print(json_text(summary))
        return
    result = f"evaluation return {summary['eval_return_mean']:.1f} ± {summary['eval_return_std']:.1f}"
    if math.isnan(summary["eval_return_mean"]):
        result = "not evaluated (eval_every=0 and final_eval=false)"
    if summary["stopped_early"]:
        result += " (reached stop_at_return: stopped early)"
    print(f"{summary['steps']:,} steps in {summary['wall_s']:.0f} s ({summary['sps']:,.0f} steps/s); {result}")
    print(f"run directory: {run_dir} (summary.json, metrics.csv, learning_curve.png, checkpoints/)")
    print(f"next: dqnkit eval {run_dir} --video episode.mp4   or   tensorboard --logdir {run_dir / 'tb'}")


class _ConfigParts(NamedTuple):
    """What a command line says of its config: the preset it starts from, and the keys that go
    over it (``overrides``: the file's, then --set's and the flags'), with the file's and
    --set's own keys apart for apex's checks."""

    preset: str
    overrides: dict[str, Any]
    from_file: dict[str, Any]
    from_set: dict[str, Any]


def _config(args: argparse.Namespace, parts: _ConfigParts | None = None) -> Any:
    """The Config that --preset, --config, --env, --seed, --device, --steps and --set describe."""
    from dqnkit import presets

    name, overrides, _, _ = parts or _config_parts(args)
    config = presets.get(name, **overrides)
    if args.preset is not None and "env_id" in overrides:
        _warn_if_unfit(name, config)
    return config


def _warn_if_unfit(name: str, config: Any) -> None:
    """Warn where the preset ``name`` is made for another family of envs than ``config``'s."""
    from dqnkit import presets

    base = presets.get(name)
    fitting, own = presets.for_env(config.env_id, config.env_kwargs), presets.for_env(base.env_id, base.env_kwargs)
    if fitting != own:
        print(
            f"warning: preset {name} is made for {own}-like envs; for {config.env_id} dqnkit would pick "
            f"--preset {fitting}",
            file=sys.stderr,
        )


def _config_parts(args: argparse.Namespace) -> _ConfigParts:
    """The file's keys, then --set's, then the flags', over the preset they start from."""
    from dqnkit import presets
    from dqnkit.config import env_kwarg_pairs, parse_overrides

    from_file, from_set = _config_file(args.config), parse_overrides(args.overrides)
    overrides = {**from_file, **from_set}
    for key in ("env_id", "seed", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.steps is not None:
        overrides["total_steps"] = args.steps
    if getattr(args, "env_kwargs", None):  # --env-kwarg key=value, over env_kwargs' own
        overrides["env_kwargs"] = {**overrides.get("env_kwargs", {}), **env_kwarg_pairs(args.env_kwargs)}
    if args.preset is not None:
        name = args.preset
    elif overrides.get("preset") in presets.names():  # a run's config.json names its preset
        name = overrides["preset"]
    else:  # that env family's defaults
        name = presets.for_env(overrides.get("env_id", "CartPole-v1"), overrides.get("env_kwargs"))
    return _ConfigParts(name, overrides, from_file, from_set)


def _config_file(path: Path | None) -> dict[str, Any]:
    """The config keys of a JSON file (a run's config.json, or any object of keys), checked:
    a key or value that is not a config's is refused naming the file. None: no keys."""
    from dqnkit.config import coerce_all

    if path is None:
        return {}
    values = read_json_file(path, f"--config {path}")
    if not isinstance(values, dict):
        raise DqnkitError(f"--config {path}: expected a JSON object of config keys, got a {type(values).__name__}")
    try:
        return coerce_all(values, hint="is it a run's config.json?")
    except DqnkitError as exc:
        raise DqnkitError(f"--config {path}: {exc}") from None


def _apex(args: argparse.Namespace) -> int:
    from dqnkit import presets
    from dqnkit.distributed import apex
    from dqnkit.monitor import default_run_dir

    parts = _config_parts(args)
    apex.check_apex_keys(parts.from_set)
    config = _config(args, parts)
    base = presets.get(parts.preset)  # a run's config.json holds every key: refuse only those the file changes
    changed = [key for key, value in parts.from_file.items() if value != getattr(base, key)]
    apex.check_apex_keys(changed, source=f"--config {args.config}:")
    if args.print_config:
        print(config.to_json())
        return 0
    run_dir = args.run_dir or default_run_dir(config, prefix="apex-")
    check_range("--ray-timeout", args.ray_timeout, 0.0, None, lo_open=True)
    check_range("--actor-timeout", args.actor_timeout, 0.0, None, lo_open=True)
    options = apex.ApexOptions(
        actors=args.actors,
        ray_address=args.ray_address,
        actor_resources=tuple(_resource(spec) for spec in args.actor_resource),
        connect_timeout_s=args.ray_timeout,
        actor_timeout_s=args.actor_timeout,
    )
    summary = apex.run(config, run_dir, options, overwrite=args.overwrite, progress=not args.quiet)
    _report(summary, run_dir, args.json)
    return 0


def _resource(spec: str) -> tuple[str, float]:
    """``NAME`` or ``NAME=AMOUNT`` (default 1) -> (name, amount)."""
    name, _, amount = spec.partition("=")
    try:
        value = float(amount) if amount else 1.0
    except ValueError:
        value = -1.0
    if not name or value <= 0:
        raise DqnkitError(f"--actor-resource expects NAME or NAME=AMOUNT with AMOUNT > 0, got {spec!r}")
    return name, value


def _eval(args: argparse.Namespace) -> int:
    from dqnkit.build import load
    from dqnkit.evaluate import evaluate, warn_if_endless
    from dqnkit.video import VIDEO_FORMATS

    if args.episodes < 1:
        raise DqnkitError(f"--episodes must be positive, got {args.episodes}")
    check_range("--seed", args.seed, 0)  # gymnasium seeds no env below 0
    if args.epsilon is not None:
        check_range("--epsilon", args.epsilon, 0.0, 1.0)
    if args.video is not None and Path(args.video).suffix.lower() not in VIDEO_FORMATS:
        raise DqnkitError(f"--video writes {' or '.join(VIDEO_FORMATS)} files, not {Path(args.video).name!r}")
    if args.video_max_steps is not None:
        if args.video is None:
            raise DqnkitError("--video-max-steps says how long a --video film may be: add --video FILE")
        check_range("--video-max-steps", args.video_max_steps, 1, None)
    agent = load(args.run_dir, device=args.device)
    if args.video is not None:
        _prepare_video(Path(args.video))
    warn_if_endless(agent.config, training=False)
    epsilon = agent.config.eval_epsilon if args.epsilon is None else args.epsilon
    returns = evaluate(agent, agent.config.env_id, args.episodes, args.seed, epsilon).returns
    result = {
        "episodes": args.episodes,
        "epsilon": epsilon,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "returns": returns.tolist(),
    }
    if args.video is not None:
        video = _film(agent, args, epsilon)
        result.update(
            video=str(video.path),
            video_frames=video.frames,
            video_fps=video.fps,
            video_return=video.episode_return,
            video_cut=video.cut,
        )
    if args.json:
        print(json_text(result))
    else:
        episodes = f"{args.episodes} episode{'s' * (args.episodes != 1)}, epsilon {epsilon:g}"
        print(f"{episodes}: return {result['return_mean']:.2f} ± {result['return_std']:.2f}")
        if args.video is not None:
            cut = f"; cut at {video.frames - 1:,} steps (--video-max-steps)" if video.cut else ""
            rate = f"{video.fps:.4g} fps"
            if video.fps != round(video.fps):  # Atari's 15 fps is 7 hundredths a frame in a GIF
                rate += ", the nearest rate a GIF holds: its frames last whole hundredths of a second"
            print(f"video: {video.path} ({video.frames:,} frames at {rate}{cut}; return {video.episode_return:g})")
    return 0


def _film(agent: Any, args: argparse.Namespace, epsilon: float) -> Any:
    """``eval --video``: one episode filmed. Ctrl-C or SIGTERM ends the film between two steps,
    so the encoder closes it as a valid file (cut inside ffmpeg's write, an MP4 is unplayable);
    a second signal stops at once, and a film that cannot be closed is removed."""
    from dqnkit.evaluate import record_video

    max_steps = args.video_max_steps or agent.config.video_max_steps
    asked: list[int] = []

    def ask(signum: int, frame: Any) -> None:
        if asked:  # the second: at once
            raise Interrupted("stopped at once", signum)
        asked.append(signum)

    here = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)} if here else {}
    try:
        video = record_video(agent, agent.config.env_id, args.video, args.seed, epsilon, max_steps, lambda: bool(asked))
    except KeyboardInterrupt as exc:
        kept = "holds the frames filmed before it" if Path(args.video).exists() else "was not written"
        raise _film_stopped(getattr(exc, "signum", signal.SIGINT), f"the video {args.video} {kept}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if asked:
        raise _film_stopped(asked[0], f"the video {args.video} holds the {video.frames:,} frames filmed before it")
    return video


def _film_stopped(signum: int, what: str) -> Interrupted:
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return Interrupted(f"{how}; {what}", signum)


def _prepare_video(path: Path) -> None:
    """Check the video writer and the video's directory before anything plays: a missing
    directory is refused (a mistyped path would silently make a tree of them), and so is a
    file in its place."""
    from dqnkit.video import require_video_writer

    require_video_writer(path.suffix.lower())
    refuse_file_in_the_way(path.parent, f"--video {path}")
    if not path.parent.is_dir():
        raise DqnkitError(f"--video {path}: directory {path.parent} does not exist (create it first)")


def _export(args: argparse.Namespace) -> int:
    from dqnkit.export import FORMATS, require_onnx

    suffix = FORMATS[args.fmt]
    out = args.out or args.run_dir / f"policy{suffix}"
    if out.suffix.lower() != suffix:
        raise DqnkitError(f"--format {args.fmt} writes a {suffix} file, not {out.name!r}")
    if out.exists() and not args.overwrite:
        raise DqnkitError(f"{out} exists; choose another --out or pass --overwrite")
    if args.fmt == "onnx":
        require_onnx()
    refuse_file_in_the_way(out.parent, f"--out {out}")
    from dqnkit.checkpoint import find_checkpoint

    find_checkpoint(args.run_dir, args.checkpoint)  # a run without it is refused before torch is imported
    from dqnkit.build import load
    from dqnkit.export import ExportMismatch, export

    agent = load(args.run_dir, device="cpu", checkpoint=args.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = export(agent, out, args.fmt)
    except ExportMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shape = ", ".join(map(str, agent.obs_shape))
    print(
        f"wrote {out} ({args.fmt}, {out.stat().st_size / 2**20:.2f} MB, {time.perf_counter() - start:.1f} s): "
        f"{agent.config.env_id} observations [B, {shape}] -> Q-values [B, {agent.n_actions}]"
    )
    print(f"checked: {result.summary()}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from dqnkit import presets

    if args.name is None:
        width = max(len(n) for n in presets.names())
        for name in presets.names():
            print(f"{name:<{width}}  {presets.describe(name)}")
    else:
        print(presets.get(args.name).to_json())
    return 0


def _plot(args: argparse.Namespace) -> int:
    from dqnkit.compare import compare

    if args.out.suffix.lower() != ".png":
        raise DqnkitError(f"--out writes a .png file, not {args.out.name!r}")
    make_dir(args.out.parent, f"--out {args.out}")
    panels = compare(args.run_dirs, args.out)
    for env, variants in panels.items():
        print(env)
        for name, episodes in variants.items():
            n, empty = len(episodes), episodes.count(0)
            blank = f" ({empty} without a finished episode yet: not drawn)" if empty else ""
            print(f"  {name}: {n} run{'s' * (n != 1)}{blank}")
    print(f"wrote {args.out}")
    return 0


def _tabular(args: argparse.Namespace) -> int:
    from dqnkit.tabular.experiments import EXPERIMENTS, summary_text

    options = {
        k: v
        for k, v in (
            ("episodes", args.episodes),
            ("alpha", args.alpha),
            ("epsilon", args.epsilon),
            ("seeds", args.seeds),
        )
        if v is not None
    }
    if args.name == "random-walk" and "epsilon" in options:
        raise DqnkitError("random-walk evaluates a fixed random policy: --epsilon does not apply")
    check_range("--episodes", options.get("episodes", 1), 1, None)
    check_range("--seeds", options.get("seeds", 1), 1, None)
    check_range("--alpha", options.get("alpha", 0.5), 0.0, 1.0, lo_open=True)
    check_range("--epsilon", options.get("epsilon", 0.1), 0.0, 1.0)
    out = args.out or Path("runs") / f"tabular-{args.name}"
    _refuse_existing_results(out, args.overwrite)
    summary = EXPERIMENTS[args.name](out, **options)
    if args.json:
        print(json_text(summary))
    else:
        print(summary_text(summary), end="")
        print(f"plots and results.json in {out}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from dqnkit import experiments

    check_range("--seeds", args.seeds, 1, None)
    if args.jobs is not None:  # None: one process per core
        check_range("--jobs", args.jobs, 1, None)
    experiments.configs(args.name, args.seeds, args.steps)  # validates every run's config first
    out = args.out or Path("runs") / f"experiment-{args.name}"
    _refuse_existing_results(out, args.overwrite)
    result = experiments.run(args.name, out, seeds=args.seeds, steps=args.steps, jobs=args.jobs, fresh=args.overwrite)
    print((out / "summary.md").read_text(), end="")
    print(f"plots and results.json in {out}")
    return 0 if result else 1


def _tune(args: argparse.Namespace) -> int:
    from dqnkit import tune

    tune.require_optuna()  # before anything: without it nothing below can run
    check_range("--trials", args.trials, 1, tune.CONFIRM_SEED)
    check_range("--jobs", args.jobs, 1, None)
    check_range("--confirm", args.confirm, 0, None)
    config = _config(args)
    if config.eval_every == 0:  # the pruner and the objective need evaluations along the way
        config = config.replace(eval_every=max(1, config.total_steps // 10))
    space = None if args.space is None else tune.read_space(args.space, config.algorithm)
    out = args.out or Path("runs") / f"tune-{config.preset}"
    storage = args.storage or tune.default_storage(out)
    study = tune.Study(config, storage, args.study or config.preset, out, args.trials, space)
    result = tune.run(study, args.jobs)
    counts = result["trials"]
    print(f"study {study.name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed")
    if "best_trial" not in result:
        print("no trial completed: no best config")
        return 1
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["best_params"].items())
    print(f"best: trial {result['best_trial']}, objective {result['best_value']:.2f} ({params})")
    print(f"run directory: {result['best_run_dir']}; config: {result['best_config']}; plot: {result['plot']}")
    if args.confirm:
        from dqnkit.stats import Interval, describe

        confirmed = tune.confirm(study, args.confirm, args.jobs)
        for name in ("tuned", "preset"):
            row = confirmed[name]
            solved = f", solved {row['solved']}/{args.confirm}" if "solved" in row else ""
            print(
                f"{name}: objective IQM {describe(Interval(*row['objective_iqm_ci95']))}, final evaluation IQM "
                f"{describe(Interval(*row['final_eval_iqm_ci95']))}, median steps {row['steps_median']:,.0f}{solved}"
            )
        p = Interval(*confirmed["probability_of_improvement_ci95"])
        print(f"P(tuned > preset) {describe(p, 2)}; {out / 'confirm.json'}, {out / 'confirm.png'}")
    print(f"next: dqnkit train --config {result['best_config']}   or   {tune.dashboard_line(storage)}")
    return 0


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


def _bench(args: argparse.Namespace) -> int:
    for flag in sorted({flag for flags in BENCH_OPTIONS.values() for flag in flags}):
        given = getattr(args, flag[2:].replace("-", "_")) not in (None, False, [])
        if given and flag not in BENCH_OPTIONS[args.name]:
            takers = " and ".join(f"`bench {name}`" for name, flags in BENCH_OPTIONS.items() if flag in flags)
            raise DqnkitError(f"{flag} applies to {takers} only")
    start = _bench_run(args)
    out = args.out or Path("bench-results") / f"{args.name}.json"
    make_dir(out.parent, f"--out {out}")
    start(out=out)
    print(f"wrote {out}")
    return 0


def _bench_run(args: argparse.Namespace) -> Callable[..., Any]:
    """The bench ``args.name`` with its options checked, to call with ``out=``. Each default
    is tested with ``is None``, not ``or``: a 0 must be refused, not read as the default."""
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train,
    "eval": _eval,
    "presets": _presets,
    "plot": _plot,
    "tabular": _tabular,
    "bench": _bench,
    "experiment": _experiment,
    "apex": _apex,
    "export": _export,
    "tune": _tune,
}


def _refuse_existing_results(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out under a file or one that holds results already."""
    refuse_file_in_the_way(out, f"results directory {out}")
    if (out / "results.json").exists() and not overwrite:
        raise DqnkitError(f"{out} already holds results; choose another --out or pass --overwrite")


def entry() -> None:
    """The ``dqnkit`` console script."""
    warnings.formatwarning = _one_line_warning
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `dqnkit ... | head` left before the output ended: no traceback about it
        if not _stdout_closed():
            raise  # another pipe broke (a worker's): a failure to show
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush is quiet too
        code = 128 + signal.SIGPIPE  # what a shell reports for a writer the closed pipe stopped
    sys.exit(code)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports POLLERR for its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (OSError, ValueError, AttributeError):  # not a file descriptor (an embedding, a test)
        return False
    return any(events & select.POLLERR for _, events in poller.poll(0))


_default_formatwarning = warnings.formatwarning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> str:
    """dqnkit's own warnings as one line, as its errors are (the source line that raised one
    means nothing to a user); other libraries' keep where they came from."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return f"warning: {cli_terms(str(message))}\n"
    return _default_formatwarning(message, category, filename, lineno, *rest)


if __name__ == "__main__":
    entry()
