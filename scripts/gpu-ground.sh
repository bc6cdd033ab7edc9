#!/usr/bin/env bash
# Ground kalm's default backbone on the accelerator machine, from kalm's source tree (no install:
# PYTHONPATH=src). Run from the repository root, once per call that carries one backbone part
# (docs/gpu.md); the call that completes the parts grounds and writes only the trained adapter,
# heads and metrics to $OUT/ground. Anything after the script name goes to
# `gpu_ground.py ground` (e.g. --fresh, --progress, --device cuda:1).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
PARTS=${KALM_GPU_PARTS:-build/gpu-parts}
# survives between calls while the machine stays warm (the checkout copy may not)
STORE=${KALM_GPU_STORE:-$HOME/.cache/kalm-gpu}
: "${OUT:?set OUT to the folder whose files come back}"

export PYTHONPATH="src:$PARTS/pylib:$STORE/pkgs${PYTHONPATH:+:$PYTHONPATH}"
export KALM_CACHE="$STORE/cache"  # the GGUF is converted once into this cache
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" scripts/gpu_ground.py receive --parts "$PARTS/backbone" --store "$STORE"
if ! "$PY" scripts/gpu_ground.py assemble --store "$STORE"; then
    echo "send the next part (see the carry lists printed by 'gpu_ground.py prepare')"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" scripts/gpu_ground.py ground --inputs "$PARTS/inputs" --out "$OUT/ground" \
    --work "$STORE/work" "$@"
