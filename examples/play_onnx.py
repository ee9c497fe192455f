"""Play one episode with a policy `dqnkit export` wrote: onnxruntime and numpy, no torch.

    dqnkit export runs/cartpole                   # writes runs/cartpole/policy.onnx
    python examples/play_onnx.py runs/cartpole/policy.onnx [--seed 0]

The file's metadata names the env (``env_id``) and the observations it takes (``obs_shape``,
``obs_dtype``); its input ``obs`` is a batch [B, *obs_shape] exactly as the env gives it, its
output ``q_values`` [B, A] float32, and the greedy action is the argmax.

The observations must come from the env as dqnkit made it. A vector env (CartPole-v1,
LunarLander-v3, ...) is ``gymnasium.make(env_id)`` as it is. Atari and MinAtar are not:

- ``ALE/<Game>-v5``: ``gymnasium.make(env_id, frameskip=1, repeat_action_probability=0.25)``,
  then ``AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)``,
  dqnkit's ``FireOnReset`` for games with a FIRE action, and ``FrameStackObservation(4)``:
  uint8 [4, 84, 84] frames, unscaled (the file divides by 255 itself).
- ``MinAtar/<Game>``: the game's [10, 10, C] grid as uint8 [C, 10, 10] (channels first).

Images from other envs go through the pixel path (channels first, resized, gray, stacked:
the file's ``pixels`` metadata), and ``env_kwargs`` are the env's ``gym.make`` arguments.
``dqnkit.envs.make_env`` builds exactly these stacks and imports no torch: this example uses
it. Without dqnkit, build the same wrappers around the env.
"""

import argparse
import json
import sys

import gymnasium as gym
import numpy as np
import onnxruntime as ort


def make_env(meta: dict[str, str]) -> gym.Env:
    """The env the policy was trained on, as dqnkit's evaluation makes it: its id, its
    ``env_kwargs``, its time limit and, for images, the pixel path's frames."""
    from dqnkit.envs import make_env as dqnkit_env  # imports no torch

    return dqnkit_env(
        meta["env_id"],
        repeat_action_probability=float(meta["repeat_action_probability"]),
        max_episode_steps=int(meta["max_episode_steps"]),
        env_kwargs=json.loads(meta.get("env_kwargs", "{}")),
        **json.loads(meta.get("pixels", "{}")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="an ONNX file written by `dqnkit export`")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode")
    parser.add_argument("--report-modules", action="store_true", help="also say whether torch was imported")
    args = parser.parse_args()

    session = ort.InferenceSession(args.policy, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    dtype = np.dtype(meta["obs_dtype"])
    env = make_env(meta)
    obs, _ = env.reset(seed=args.seed)
    total, steps, done = 0.0, 0, False
    while not done:
        q_values = session.run([meta["output"]], {meta["input"]: np.asarray(obs, dtype=dtype)[None]})[0]  # [1, A]
        obs, reward, terminated, truncated, _ = env.step(int(q_values[0].argmax()))
        total, steps, done = total + float(reward), steps + 1, terminated or truncated
    env.close()
    print(f"{meta['env_id']}: return {total:g} in {steps} steps")
    if args.report_modules:
        print(json.dumps({"torch_imported": sys.modules.get("torch") is not None}))


if __name__ == "__main__":
    main()
