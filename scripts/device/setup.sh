# Sourced at the start of a command on a lent GPU machine (no network there): unpacks the site
# bundle built by ../shared/device/build-bundle.sh into /tmp/site and sets the environment.
# usage (inside `run`): source scripts/device/setup.sh
set -e
if [ ! -d /tmp/site/ray ]; then mkdir -p /tmp/site && tar xJf .device-bundle/site.tar.xz -C /tmp/site; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export FORGE_CACHE=/tmp/forge-cache WANDB_MODE=offline
# uvloop (a Forge dependency the bundle lacks), when carried as .whl-uvloop
if [ -d .whl-uvloop ] && [ ! -d /tmp/site/uvloop ]; then python3 -m zipfile -e .whl-uvloop/*.whl /tmp/site; fi
# the SmolLM2 tokenizer (carried as .forge-cache: no network there)
if [ -d .forge-cache ] && [ ! -d /tmp/forge-cache/tokenizers ]; then mkdir -p /tmp/forge-cache && cp -r .forge-cache/* /tmp/forge-cache/; fi
forge() { python3 -m forge.cli "$@"; }
set +e
