"""`EngineActor`: the built-in engine in a Ray actor (num_cpus=0 by default; add num_gpus with .options).

actor = EngineActor.options(num_gpus=1).remote("tiny", device="cuda", host="0.0.0.0")
url = ray.get(actor.url.remote())        # reachable from other nodes when host is 0.0.0.0
ray.get(actor.stop.remote())
"""

from __future__ import annotations

from typing import Any

import ray

from gateway.engines.native.launch import start_engine_in_thread


class _EngineActor:
    def __init__(self, model: str, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        if str(config.get("device", "cpu")).startswith("cuda") and "device" in config:
            import torch

            if config["device"] == "cuda" and torch.cuda.is_available():
                config["device"] = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES: the actor's GPU is index 0
        self.handle = start_engine_in_thread(model, host=host, port=port, **config)
        if host in ("0.0.0.0", "::"):
            port_ = self.handle.url.rsplit(":", 1)[1]
            self._url = f"http://{ray.util.get_node_ip_address()}:{port_}"
        else:
            self._url = self.handle.url

    def url(self) -> str:
        return self._url

    def health(self) -> bool:
        return self.handle.core.alive()

    def load(self) -> dict[str, int]:
        return self.handle.core.load()

    def stop(self) -> None:
        self.handle.stop()


EngineActor = ray.remote(num_cpus=0)(_EngineActor)
