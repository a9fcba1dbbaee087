#!/usr/bin/env bash
# Issue 4 acceptance 3 on a GPU host's idle CPU cores: `forge bench gateway` (CPU only) three times,
# then scripts/profile_gateway.py. uvloop comes from the carried `.whl-uvloop` (the bundle lacks it).
source scripts/device/setup.sh
python3 -c "import uvloop; print('uvloop', uvloop.__version__)"
for i in 1 2 3; do
  timeout 180 python3 -m forge.cli bench gateway --json 2>>$OUT/gateway.log | tail -1 | tee -a $OUT/gateway.jsonl
done
timeout 240 python3 scripts/profile_gateway.py 300 45 > $OUT/gateway_profile.txt 2>&1
head -3 $OUT/gateway_profile.txt
