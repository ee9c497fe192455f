"""``dqnkit`` command line: parses it, runs the command (:mod:`dqnkit.commands`), and turns
what went wrong into one line and an exit code.

Exit codes: 0 ok, 2 bad input (one line ``error: ...`` on stderr, no traceback),
1 an unexpected failure (traceback) or a write the disk refused (one line),
130 interrupted by Ctrl-C, 143 by SIGTERM (a run saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import select
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from dqnkit.commands import COMMANDS
from dqnkit.errors import DqnkitError, sigterm_raises

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
    _add_env_kwarg(tune)
    tune.add_argument("--trials", type=int, default=40, help="trials in the study in total, over all workers (40)")
    tune.add_argument("--jobs", type=int, default=1, help="trials side by side on this machine, in processes (1)")
    tune.add_argument(
        "--seeds-per-trial",
        type=int,
        default=1,
        metavar="K",
        help="seeds each trial trains; its value is their mean (1)",
    )
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
    _add_env_kwarg(parser)
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


def _add_env_kwarg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-kwarg", dest="env_kwargs", action="append", default=[], metavar="KEY=VALUE",
                        help="an argument for gymnasium.make, e.g. continuous=false (repeatable; JSON values; "
                        "goes into env_kwargs)")  # fmt: skip


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
