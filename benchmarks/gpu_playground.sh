#!/usr/bin/env bash
# Issue 39's GPU run in one call: installs what the GPU machine lacks from the wheels that travel with the checkout
# (.whl/, made by benchmarks/gpu_wheels.sh: the learner's, Brax's and MuJoCo Playground's, and the LEAP hand's
# meshes as leap_hand_assets.tgz; torch and JAX are the machine's own), then runs benchmarks/gpu_playground.py:
# sapg and no_split trained for a few minutes each on env=playground_leap_cube_reorient at N = 12288.
# Arguments go to gpu_playground.py.
#
#   bash benchmarks/gpu_playground.sh --out "$OUT"                               # on the GPU machine
#   bash benchmarks/gpu_playground.sh --device cpu --num-envs 12 --seconds 1 --horizon 4   # for size, on a CPU
#
# Sized for one device call of under 8 minutes: about 1 minute to install and import, JAX's compilation of the task
# (once, shared by both variants), then 90 s of training per variant (--seconds), 7 minutes in all if compiling takes 3 (it took 2.7 on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [[ -d .whl ]] && ! "$python" -c "import torchrl, tensordict, hydra, brax, mujoco_playground" 2>/dev/null; then
    # --no-deps: never let pip replace the machine's CUDA torch or JAX (nor pull Playground's warp-lang: impl=jax)
    "$python" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
args=()
if [[ -f .whl/leap_hand_assets.tgz ]]; then  # the machine has no envpool (whose copy the adapter reads here) nor git
    mkdir -p .whl/mujoco_menagerie && tar xzf .whl/leap_hand_assets.tgz -C .whl/mujoco_menagerie
    args+=(--menagerie .whl/mujoco_menagerie)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import torch, jax; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| jax', jax.__version__, jax.default_backend())"
exec "$python" benchmarks/gpu_playground.py --seconds 90 "${args[@]}" "$@"
