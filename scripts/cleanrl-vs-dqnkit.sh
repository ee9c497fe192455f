#!/usr/bin/env bash
# CleanRL's own dqn.py against dqnkit's `cartpole-cleanrl` preset (the same settings), one
# after the other on this machine: issue 18's 2x check, which `dqnkit bench speed` cannot
# make in-process because CleanRL is a script, not a package.
#
# CleanRL's dqn.py (commit fe8d8a03) speaks gymnasium 0.29; the patch beside this script
# ports it to gymnasium 1.x without changing its algorithm: SAME_STEP autoreset (0.29's
# behaviour), `final_obs` for `final_observation`, and episode stats read from 1.x's
# `final_info` dict.
#
# Usage: CLEANRL=path/to/cleanrl-checkout bash scripts/cleanrl-vs-dqnkit.sh [STEPS] [SEED]
# (needs `pip install tyro` beside dqnkit's dev install)
set -euo pipefail
steps=${1:-100000}; seed=${2:-1}
: "${CLEANRL:?set CLEANRL to a checkout of github.com/vwxyzjn/cleanrl}"
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cp -r "$CLEANRL/cleanrl_utils" "$CLEANRL/cleanrl/dqn.py" "$work/"
(cd "$work" && patch -s -p2 dqn.py < "$here/scripts/cleanrl-dqn-gymnasium1.patch")
cd "$work"
# CleanRL prints its SPS (steps since start / seconds since start) every 100 steps once learning
"$here/.venv/bin/python" dqn.py --total-timesteps "$steps" --seed "$seed" > cleanrl.log 2>&1
cleanrl_sps=$(grep SPS cleanrl.log | tail -1 | cut -d' ' -f2)
"$here/.venv/bin/dqnkit" train --preset cartpole-cleanrl --steps "$steps" --seed "$seed" --quiet \
    --run-dir "$work/dqnkit" > /dev/null
dqnkit_sps=$(python3 -c "import json; print(json.load(open('$work/dqnkit/summary.json'))['sps'])")
python3 -c "print(f'CleanRL dqn.py {$cleanrl_sps:.0f} steps/s, dqnkit {$dqnkit_sps:.0f} steps/s: {$dqnkit_sps / $cleanrl_sps:.2f}x')"
rm -rf "$work"
