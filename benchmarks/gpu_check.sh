#!/usr/bin/env bash
# The GPU check in one call (issue 12): installs what the GPU machine lacks from the wheels that travel with the
# checkout (.whl/, made by benchmarks/gpu_wheels.sh; torch, JAX and the rest are the machine's own), then runs
# benchmarks/gpu_check.py: no host sync inside an iteration, frames/s of sapg, no_split and stock TorchRL PPO at
# N = 24576 on the pure-torch pendulum and on Brax ant. Arguments go to gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                                        # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --num-envs 384 --iters 1 --rounds 1 --no-brax    # for size, on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [[ -d .whl ]] && ! "$python" -c "import torchrl, tensordict, hydra" 2>/dev/null; then
    # --no-deps: never let pip replace the machine's CUDA torch (torchrl's pin says 2.13; 2.11 runs its Python parts)
    "$python" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import torch, torchrl, tensordict; print('torch', torch.__version__, 'torchrl', torchrl.__version__, 'tensordict', tensordict.__version__, 'cuda', torch.cuda.is_available())"
exec "$python" benchmarks/gpu_check.py "$@"
