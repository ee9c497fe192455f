#!/usr/bin/env bash
# The checks that need a GPU, as one script for a bare, offline GPU machine (see
# ../shared/gpu-kit/README.md for the wheels in .whl/): the cuda-marked tests, then
# `dqnkit bench atari-train --compile --variant ...` (the update eager, as a CUDA graph and
# through torch.compile; training with the envs stepping while the agent learns, with the
# frames gathered on the host instead of the GPU mirror, and with gymnasium's env stack
# instead of ALE's C++ pool), then the 8-env pool's
# env steps/s alone and an evaluation's env side in gymnasium envs and in ALE's pool
# (`bench atari --envs 8`), then PQN's Atari steps/s with 16 envs if time
# allows, then Breakout training with the time that is left.
# Usage, from the project root there: OUT=DIR BUDGET_S=570 bash scripts/gpu-check.sh
set -u
start=$(date +%s)
OUT=${OUT:-/tmp/gpu-check}; BUDGET_S=${BUDGET_S:-570}; BENCH_STEPS=${BENCH_STEPS:-25000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
left() { echo $((BUDGET_S - ($(date +%s) - start))); }

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/dq . >/dev/null || exit 1
export PYTHONPATH=/tmp/dq:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cores', __import__('os').cpu_count())" | tee -a "$OUT/gpu.txt"

echo "== cuda tests ($(left) s left)"
timeout 200 python3 -m pytest -m cuda -v -p no:cacheprovider --durations=5 tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt" | tail -25

echo "== bench atari-train, with the update through torch.compile too ($(left) s left)"
(cd /tmp && timeout 360 python3 -m dqnkit.cli bench atari-train --steps "$BENCH_STEPS" --envs 8 --device cuda \
  --compile --variant overlap_env_step=true --variant frame_gather=host --variant env_backend=gymnasium \
  --out "$OUT/atari-train.json" 2>&1 \
  | grep -v "A.L.E\|Stella" | tee "$OUT/atari-train.txt" | tail -26)  # a timeout still leaves the progress lines

if [ "$(left)" -gt 120 ]; then
  echo "== bench atari with 8 envs: the envs alone, on these cores, and an evaluation both ways ($(left) s left)"
  (cd /tmp && timeout 90 python3 -m dqnkit.cli bench atari --seconds 2 --envs 8 --out "$OUT/atari.json" 2>&1 \
    | grep -v "A.L.E\|Stella" | tail -14)
fi

if [ "$(left)" -gt 200 ]; then
  echo "== pqn-atari with 16 envs, env steps/s ($(left) s left)"
  (cd /tmp && timeout 150 python3 -m dqnkit.cli train --preset pqn-atari --device cuda --quiet --json --steps 81920 \
    --set num_envs=16 --set eval_every=0 --set eval_episodes=1 --set final_eval=false --run-dir /tmp/pqn-atari \
    2>&1 | grep -v "A.L.E\|Stella" | tail -20 | tee "$OUT/pqn-atari.json")
fi

t=$(( $(left) - 25 ))
echo "== Breakout training for $t s"
if [ "$t" -gt 30 ]; then
  (cd /tmp && timeout -s INT -k 20 "$t" python3 -m dqnkit.cli train --preset atari --device cuda --quiet \
    --set num_envs=8 --set learning_starts=20000 --set exploration_steps=250000 --set buffer_size=200000 \
    --set eval_every=100000 --set eval_episodes=4 --set checkpoint_every=10000000 \
    --run-dir /tmp/breakout 2>&1 | tail -3)
  cp /tmp/breakout/metrics.csv "$OUT/breakout-metrics.csv"
  cp /tmp/breakout/config.json "$OUT/breakout-config.json"
fi
echo "== done in $(( $(date +%s) - start )) s"
