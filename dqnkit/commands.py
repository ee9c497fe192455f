"""What each ``dqnkit`` command does once its command line is parsed (:mod:`dqnkit.cli`):
check what it can before any work, call the library, print the result. The library's
modules (torch, matplotlib, Ray) are imported inside each command, so that a bad command
line is answered at once.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dqnkit.command_config import config_from_args, config_parts, resume_changes
from dqnkit.config import check_range
from dqnkit.errors import DqnkitError, Interrupted
from dqnkit.files import json_text, make_dir, refuse_file_in_the_way


def _train(args: argparse.Namespace) -> int:
    # dqnkit.training imports torch (about 1 s): only once the command line is known to be good
    if args.resume is not None:
        changes = resume_changes(args)
        run_dir = args.resume
        from dqnkit.training import resume

        summary = resume(run_dir, args.steps, progress=not args.quiet, changes=changes)
    else:
        config = config_from_args(args)
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


def _apex(args: argparse.Namespace) -> int:
    from dqnkit import presets
    from dqnkit.distributed import apex
    from dqnkit.monitor import default_run_dir

    parts = config_parts(args)
    apex.check_apex_keys(parts.from_set)
    config = config_from_args(args, parts)
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
    # the trials' seeds (trials x seeds per trial) stay below the confirmation's
    check_range("--seeds-per-trial", args.seeds_per_trial, 1, tune.CONFIRM_SEED // args.trials)
    check_range("--jobs", args.jobs, 1, None)
    check_range("--confirm", args.confirm, 0, None)
    config = config_from_args(args)
    from dqnkit.build import check_runnable
    from dqnkit.envs import EnvMaker, check_env_id

    check_env_id(EnvMaker.from_config(config))  # an env no trial could make is refused before the study
    check_runnable(config)
    if config.eval_every == 0:  # the pruner and the objective need evaluations along the way
        config = config.replace(eval_every=max(1, config.total_steps // 10))
    space = None if args.space is None else tune.read_space(args.space, config.algorithm)
    out = args.out or Path("runs") / f"tune-{config.preset}"
    storage = args.storage or tune.default_storage(out)
    study = tune.Study(config, storage, args.study or config.preset, out, args.trials, space, args.seeds_per_trial)
    result = tune.run(study, args.jobs)
    counts = result["trials"]
    print(f"study {study.name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed")
    if "best_trial" not in result:
        print("no trial completed: no best config")
        return 1
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["best_params"].items())
    start = ", the starting config: no trial beat it" if result["best_is_start"] else ""
    print(f"best: trial {result['best_trial']}{start}, objective {result['best_value']:.2f} ({params})")
    print(f"run directory: {result['best_run_dir']}; config: {result['best_config']}; plot: {result['plot']}")
    if args.confirm:
        from dqnkit.confirm import confirm
        from dqnkit.stats import Interval, describe

        confirmed = confirm(study, args.confirm, args.jobs)
        for name in ("tuned", "preset"):
            row = confirmed[name]
            solved = f", solved {row['solved']}/{args.confirm}" if "solved" in row else ""
            print(
                f"{name}: objective IQM {describe(Interval(*row['objective_iqm_ci95']))}, final evaluation IQM "
                f"{describe(Interval(*row['final_eval_iqm_ci95']))}, median steps {row['steps_median']:,.0f}{solved}"
            )
        if confirmed["tuned_is_preset"]:
            print("the tuned config is the preset: one set of runs is both rows")
        p = Interval(*confirmed["probability_of_improvement_ci95"])
        print(f"P(tuned > preset) {describe(p, 2)}; {out / 'confirm.json'}, {out / 'confirm.png'}")
        print(f"verdict: {confirmed['verdict']}")
    print(f"next: dqnkit train --config {result['best_config']}   or   {tune.dashboard_line(storage)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dqnkit.bench.command import bench_run

    start = bench_run(args)
    out = args.out or Path("bench-results") / f"{args.name}.json"
    make_dir(out.parent, f"--out {out}")
    start(out=out)
    print(f"wrote {out}")
    return 0


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
