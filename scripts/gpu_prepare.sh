#!/usr/bin/env bash
# Gather what scripts/gpu_check.sh needs on a CUDA machine that has no network, into .gpu/
# (git-ignored through .git/info/exclude, never committed). Run here, from anywhere, on a
# machine with pip and apt and with ../shared beside the repository:
#
#     bash scripts/gpu_prepare.sh
#
# .gpu/ then holds, in about 40 MiB:
#   data/, bench/      ../shared's data (UCI optdigits, the MNIST test set) and its reference
#                      loop: gpu_check.sh links .gpu as ../shared there
#   fashion-mnist/     Debian's dataset-fashion-mnist (60,000 training images, MNIST's format)
#   wheels/            the dependencies of digitcnn (and of its tests) that the CUDA image
#                      lacks, built for its Python (GPU_PYTHON, default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
gpu=.gpu
python_version="${GPU_PYTHON:-3.12}"
if [ ! -d "$shared/data" ]; then
    echo "gpu_prepare.sh: $shared/data not found: put the shared data beside the repository" >&2
    exit 2
fi
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p "$gpu/wheels"
rm -rf "$gpu/data" "$gpu/bench"
cp -r "$shared/data" "$shared/bench" "$gpu/"

fashion=/usr/share/datasets/fashion-mnist
if [ ! -f "$fashion/train-images-idx3-ubyte.gz" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
rm -rf "$gpu/fashion-mnist"
cp -r "$fashion" "$gpu/fashion-mnist"

# Not in the image (its package list: the device notes' KINDS.md): ucimlrepo for the UCI
# reader; Optuna and its storage for the tuner; Starlette and uvicorn for the board. The
# versions are this environment's, the ones the suite passes with here. Ray, MLflow, MkDocs
# and Playwright stay behind: their tests skip, saying so, and they are CPU-side features.
wheels=(ucimlrepo optuna alembic sqlalchemy greenlet mako colorlog starlette uvicorn)
rm -f "$gpu"/wheels/*.whl
for name in "${wheels[@]}"; do
    version="$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
    spec="$name${version:+==$version}"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$gpu/wheels" "$spec"
done
du -sh "$gpu"
