"""The engine protocol client now lives in the ground layer: `forge.ground.engine_client`.

Kept as an import path for tests/engines/test_prefix_cache.py, which still names it.
"""

from forge.ground.engine_client import (  # noqa: F401
    DEFAULT_GROUP_NAME,
    SAMPLING_PARAM_FIELDS,
    EngineClient,
    EngineError,
    EngineProtocolError,
    EngineRequestError,
    EngineUnavailableError,
    GenerateResult,
    SyncEngineClient,
    check_sampling_params,
    generate_body,
    parse_generate,
)
