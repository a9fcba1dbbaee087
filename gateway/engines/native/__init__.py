"""The built-in inference engine: SGLang's HTTP protocol over any transformers causal LM.

Entry points: `start_engine_in_thread(...)` (in-process; returns a handle with `.url`, `.stop()`),
`python -m gateway.engines.native --model PATH --port N`, and `EngineActor` (Ray) in `actor.py`.
See gateway/engines/README.md for what is built on transformers and what is hand-written.
"""

from gateway.engines.native.launch import (
    EngineConfig,
    EngineHandle,
    build_core,
    serve_core,
    start_engine_in_thread,
)

__all__ = ["EngineConfig", "EngineHandle", "build_core", "serve_core", "start_engine_in_thread"]
