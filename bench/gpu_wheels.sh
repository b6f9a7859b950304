#!/usr/bin/env bash
# Download the wheels bench/gpu_check.py needs beyond torch and transformers, for a Linux x86_64
# GPU machine with Python 3.12 that cannot reach a package index itself:
#
#   bash bench/gpu_wheels.sh [DIR]          # here, with pip and network; DIR defaults to wheels/
#   # copy DIR to the GPU machine, then there:
#   python3 -m pip install --no-index --no-deps --find-links DIR DIR/*.whl
#   python3 bench/gpu_check.py --out gpu-check-out
#
# (--no-deps: every dependency the check needs that such a machine usually lacks is in the list
# below; torch, transformers, accelerate, numpy, pandas, pyarrow, pyyaml, psutil, jinja2, xxhash,
# tqdm, fsspec, huggingface_hub, safetensors and tokenizers are expected to be there.) Set
# PYTHON_VERSION=3.11 etc. for another interpreter, and EXTRA="transformers==5.24.0 pyarrow==26.0.1"
# to add packages the machine has in too old a version (datasets 5.2 wants pyarrow >= 24;
# the check was written against transformers 5.24).
#
# Sizes as downloaded for Python 3.12 (2026-11-30), about 48 MiB in all, bitsandbytes most of it
# (it ships its CUDA 11.8-13.2 and ROCm libraries in one wheel):
#   bitsandbytes 0.50.2 (manylinux_2_24)  41.1 MiB   QLoRA 4-bit
#   pydantic_core 2.46.4 (manylinux_2_17)  2.0 MiB   learnloop's configuration
#   trl 1.16.0                             0.9 MiB
#   liger_kernel 0.8.5                     0.9 MiB   Triton kernels (GPU only)
#   peft 0.21.2                            0.8 MiB
#   datasets 5.2.0                         0.6 MiB
#   pydantic 2.13.4                        0.5 MiB
#   multiprocess 0.70.19, dill 0.4.1       0.3 MiB   datasets' own
#   annotated_types 0.8.0, typing_inspection 0.4.5   pydantic's own
#   (optional) transformers 5.24.0        12.9 MiB;  pyarrow 26.0.1 about 42 MiB
set -euo pipefail

DIR="${1:-wheels}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
PACKAGES=(
    trl==1.16.0
    peft==0.21.2
    datasets==5.2.0
    bitsandbytes==0.50.2
    liger-kernel==0.8.5
    "dill>=0.3,<0.4.2"
    "multiprocess<0.70.20"
    pydantic==2.13.4
    pydantic_core==2.46.4
    annotated-types
    typing-inspection
)
# shellcheck disable=SC2206  # EXTRA is a space-separated list of requirements
PACKAGES+=(${EXTRA:-})

mkdir -p "$DIR"
python3 -m pip download --no-deps --only-binary=:all: \
    --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DIR" "${PACKAGES[@]}"
du -ch "$DIR"/*.whl | sort -h
