#!/usr/bin/env bash
# Build LeRobot 0.4.4 in its own Python 3.11 virtual environment (not in vla's venv: lerobot 0.4.4
# caps torch below 2.11, vla uses torch 2.13). About 8 minutes and 8 GB on a 2-core machine.
#
#   bash bench/build_lerobot_env.sh [ENV_DIR]        # default ENV_DIR: ./lerobot-env
#   export VLA_LEROBOT_PYTHON=ENV_DIR/bin/python     # what `--policy lerobot:PATH` and the tests use
#
# In that environment `lerobot-train` trains ACT / Diffusion Policy on the CPU on a store exported
# with `vla data export-lerobot` (pass --dataset.video_backend=pyav: torchcodec's FFmpeg libraries
# are absent here).
set -euo pipefail
ENV_DIR="${1:-lerobot-env}"
PYTHON="${PYTHON:-python3.11}"
if [ ! -x "$ENV_DIR/bin/python" ]; then
    "$PYTHON" -m venv "$ENV_DIR"
fi
"$ENV_DIR/bin/pip" install --quiet --upgrade pip
"$ENV_DIR/bin/pip" install --quiet "lerobot==0.4.4"
"$ENV_DIR/bin/python" -c "import lerobot, torch, av; print('lerobot', lerobot.__version__, 'torch', torch.__version__, 'av', av.__version__)"
echo "export VLA_LEROBOT_PYTHON=$(cd "$ENV_DIR" && pwd)/bin/python"
