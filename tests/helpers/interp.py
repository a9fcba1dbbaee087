"""Run a test file's function in a child process under triton's interpreter (TRITON_INTERPRET=1).

TRITON_INTERPRET must be set before triton itself is imported (triton.language's own @jit helpers
are decorated then), so kernel cases run in one child and the tests read its results: the child
prints one `RESULTS <json>` line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_interp_child(test_file: str, entry: str, timeout: float = 300) -> dict:
    """Call `entry` of `test_file` in a child with TRITON_INTERPRET=1; its RESULTS line, parsed."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed: pip install triton to run the kernel on its CPU interpreter")
    code = (
        "import importlib.util, sys; sys.path.insert(0, sys.argv[1]); "
        "spec = importlib.util.spec_from_file_location('interp_test', sys.argv[2]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); getattr(m, sys.argv[3])()"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), test_file, entry],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1].removeprefix("RESULTS "))
