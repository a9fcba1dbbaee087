"""The gateway: OpenAI + Anthropic compatible HTTP server, sessions, token ledger, engine routing.

    from gateway import GatewayConfig, start_gateway_in_thread
    handle = start_gateway_in_thread(GatewayConfig(engine_urls=[engine_url], model="tiny"), pool=pool)
    handle.url  # POST {url}/sessions {"task_id": ...} → {"session_id", "base_url"}; handle.stop()

Ray: `gateway.actor.GatewayActor` (num_cpus=0). CLI: `python -m gateway --engine-url URL`.
Imports are lazy so `import gateway.engines...` does not pull in the server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Gateway", "GatewayConfig", "GatewayHandle", "start_gateway_in_thread"]


def __getattr__(name: str) -> Any:
    if name == "GatewayConfig":
        from gateway.config import GatewayConfig

        return GatewayConfig
    if name == "Gateway":
        from gateway.service import Gateway

        return Gateway
    if name in ("GatewayHandle", "start_gateway_in_thread"):
        from gateway import server

        return getattr(server, name)
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
