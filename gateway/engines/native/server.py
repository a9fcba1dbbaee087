"""The built-in engine's HTTP server: SGLang's native routes over `EngineCore`.

aiohttp, not FastAPI/uvicorn: it is the one HTTP stack present on every image Forge runs on
(the GPU image has no fastapi/uvicorn), it is light (the gateway's overhead target is ~2 ms),
and it lets a server run inside any thread's own event loop, which `start_engine_in_thread`
and the Ray actor need. Routes and body fields are SGLang's (see `forge/ground/engine_client.py`); errors are JSON
`{"error": {"message": ...}}` with 4xx for bad input, as SGLang's `_create_error_response`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from gateway.engines.native import weights
from gateway.engines.native.core import EngineCore
from gateway.engines.native.request import BadRequest, parse_generate, sglang_fields

log = logging.getLogger("forge.engine")


def _key(name: str, kind: type) -> Any:
    """An aiohttp AppKey (3.9+), or a plain string key on older aiohttp."""
    return web.AppKey(name, kind) if hasattr(web, "AppKey") else name


CORE = _key("core", EngineCore)
INFO = _key("info", dict)
GROUPS = _key("groups", dict)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


async def read_json(request: web.Request, cls: str | None = None, required: tuple[str, ...] = ()) -> dict:
    """The body as a JSON object; with `cls`, only that SGLang request type's fields are allowed."""
    raw = await request.read()
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if cls is not None:
        known = set(sglang_fields()["dataclasses"][cls])
        unknown = sorted(set(body) - known)
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown} for {cls}")
    missing = [k for k in required if k not in body]
    if missing:
        raise BadRequest(f"missing field(s) {missing}")
    return body


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(400, str(exc))
    except weights.WeightError as exc:
        return web.json_response({"success": False, "message": str(exc)}, status=400)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.status, exc.reason or "error")
        raise


async def _on_core(request: web.Request, fn: Any) -> Any:
    """Run fn on the scheduler thread (between steps) and await its result."""
    core = request.app[CORE]
    return await asyncio.wrap_future(core.call(fn))


# ---- generation ---------------------------------------------------------------------------
async def generate(request: web.Request) -> web.Response:
    core = request.app[CORE]
    body = await read_json(request)
    req, _ = parse_generate(body, core.vocab_size, core.context_length, core.tokenizer)
    if not core.alive():
        return error(503, "the engine is not running")
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def on_done(result: dict[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))
        except RuntimeError:  # the server's loop is closed (shutdown): nobody waits for this reply
            pass

    core.submit(req, on_done)
    try:
        result = await fut
    except asyncio.CancelledError:  # client went away: free the slot
        core.call(lambda: core.abort(req.rid, message="client disconnected"))
        raise
    reason = result["meta_info"].get("finish_reason") or {}
    if reason.get("status_code") == 503:
        return web.json_response({"error": {"message": reason.get("message")}}, status=503)
    return web.json_response(result)


async def abort_request(request: web.Request) -> web.Response:
    body = await read_json(request, "AbortReq")
    rid, abort_all = body.get("rid") or None, bool(body.get("abort_all", False))
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("rid must be a string")
    core = request.app[CORE]
    await _on_core(request, lambda: core.abort(rid, abort_all=abort_all))
    return web.Response(status=200)


async def pause_generation(request: web.Request) -> web.Response:
    body = await read_json(request, "PauseGenerationReqInput")
    mode = body.get("mode", "abort")
    if mode not in ("abort", "retract", "in_place"):
        raise BadRequest("mode must be one of abort, retract, in_place")
    core = request.app[CORE]
    await _on_core(request, lambda: core.pause(mode))
    return web.json_response({"message": "Generation paused successfully.", "status": "ok"})


async def continue_generation(request: web.Request) -> web.Response:
    await read_json(request, "ContinueGenerationReqInput")
    core = request.app[CORE]
    await _on_core(request, core.resume)
    return web.json_response({"message": "Generation continued successfully.", "status": "ok"})


# ---- weights ------------------------------------------------------------------------------
def _weights_result(core: EngineCore, body: dict, count: int) -> dict[str, Any]:
    version = body.get("weight_version")
    if version is not None and not isinstance(version, str):
        raise BadRequest("weight_version must be a string")
    new = core.set_weight_version(version)
    return {
        "success": True,
        "message": f"Updated {count} tensors; weight_version={new}",
        "num_paused_requests": 0,
    }


async def update_weights_from_disk(request: web.Request) -> web.Response:
    body = await read_json(request, "UpdateWeightFromDiskReqInput", required=("model_path",))
    if not isinstance(body["model_path"], str):
        raise BadRequest("model_path must be a string")
    core = request.app[CORE]

    def run() -> dict[str, Any]:
        if body.get("abort_all_requests"):
            core.abort(None, abort_all=True, message="Aborted for a weight update")
        count = weights.load_dir(core.model, body["model_path"])
        return _weights_result(core, body, count)

    return web.json_response(await _on_core(request, run))


async def init_weights_update_group(request: web.Request) -> web.Response:
    body = await read_json(
        request,
        "InitWeightsUpdateGroupReqInput",
        required=("master_address", "master_port", "rank_offset", "world_size"),
    )
    from forge.ground.weight_sync import new_weight_update_group

    name = body.get("group_name", "weight_update_group")
    backend = body.get("backend", "nccl")
    for key in ("master_port", "rank_offset", "world_size"):
        if isinstance(body[key], bool) or not isinstance(body[key], int):
            raise BadRequest(f"{key} must be an integer")
    if backend not in ("nccl", "gloo"):
        raise BadRequest("backend must be nccl or gloo")
    groups = request.app[GROUPS]
    if name in groups:
        raise BadRequest(f"weight update group {name!r} already exists")
    try:
        group = await asyncio.to_thread(
            new_weight_update_group,
            backend,
            str(body["master_address"]),
            body["master_port"],
            body["world_size"],
            body["rank_offset"],
            name,
            float(request.app[INFO].get("dist_timeout_s", 600.0)),
        )
    except Exception as exc:  # noqa: BLE001 - reported as SGLang does
        return web.json_response({"success": False, "message": f"Failed to init group: {exc}"}, status=400)
    groups[name] = (group, backend)
    return web.json_response({"success": True, "message": "Succeeded to initialize custom process group."})


async def destroy_weights_update_group(request: web.Request) -> web.Response:
    body = await read_json(request, "DestroyWeightsUpdateGroupReqInput")
    name = body.get("group_name", "weight_update_group")
    entry = request.app[GROUPS].pop(name, None)
    if entry is None:
        return web.json_response({"success": False, "message": "The group does not exist."}, status=400)
    from forge.ground.weight_sync import destroy_group

    await asyncio.to_thread(destroy_group, entry[0])
    return web.json_response({"success": True, "message": "Succeeded to destroy custom process group."})


async def update_weights_from_distributed(request: web.Request) -> web.Response:
    body = await read_json(
        request, "UpdateWeightsFromDistributedReqInput", required=("names", "dtypes", "shapes")
    )
    names, dtypes, shapes = body["names"], body["dtypes"], body["shapes"]
    if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)):
        raise BadRequest("names, dtypes and shapes must be lists")
    if not all(isinstance(s, list) and all(isinstance(x, int) and x >= 0 for x in s) for s in shapes):
        raise BadRequest("shapes must be lists of non-negative integers")
    name = body.get("group_name", "weight_update_group")
    entry = request.app[GROUPS].get(name)
    if entry is None:
        raise BadRequest(f"no weight update group {name!r}: call /init_weights_update_group first")
    group, backend = entry
    core = request.app[CORE]
    device = core.runner.device if backend == "nccl" else __import__("torch").device("cpu")

    def run() -> dict[str, Any]:
        if body.get("abort_all_requests"):
            core.abort(None, abort_all=True, message="Aborted for a weight update")
        tensors = weights.receive(group, names, dtypes, shapes, device)
        count = weights.apply(core.model, tensors)
        return _weights_result(core, body, count)

    return web.json_response(await _on_core(request, run))


async def update_weights_from_tensor(request: web.Request) -> web.Response:
    """Colocated weight sync: each entry is a bucket shared by CUDA IPC (see forge.ground.cuda_ipc).

    SGLang's own load formats carry pickles; this engine refuses them and never unpickles."""
    from forge.ground import cuda_ipc

    body = await read_json(request, "UpdateWeightsFromTensorReqInput", required=("serialized_named_tensors",))
    if body.get("load_format") != cuda_ipc.FORMAT:
        raise BadRequest(
            f"load_format {body.get('load_format')!r} is not supported: this engine takes "
            f"{cuda_ipc.FORMAT!r} only (SGLang's formats are pickles, which it never loads)"
        )
    entries = body["serialized_named_tensors"]
    if not isinstance(entries, list) or not entries:
        raise BadRequest("serialized_named_tensors must be a non-empty list")
    try:
        metas = [cuda_ipc.decode(e) for e in entries]
    except cuda_ipc.IPCError as exc:
        raise BadRequest(str(exc)) from exc
    core = request.app[CORE]

    def run() -> dict[str, Any]:
        import torch

        if body.get("abort_all_requests"):
            core.abort(None, abort_all=True, message="Aborted for a weight update")
        count = 0
        for meta in metas:
            try:
                tensors = cuda_ipc.unpack_bucket(meta)
            except cuda_ipc.IPCError as exc:
                raise weights.WeightError(str(exc)) from exc
            count += weights.apply(core.model, tensors)
            del tensors
        torch.cuda.synchronize()  # the copies are done before the trainer frees its buffer
        return _weights_result(core, body, count)

    return web.json_response(await _on_core(request, run))


async def update_weight_version(request: web.Request) -> web.Response:
    body = await read_json(request, "UpdateWeightVersionReqInput", required=("new_version",))
    core = request.app[CORE]

    def run() -> str:
        if body.get("abort_all_requests", True):
            core.abort(None, abort_all=True, message="Aborted for a weight version update")
        return core.set_weight_version(str(body["new_version"]))

    new = await _on_core(request, run)
    return web.json_response(
        {"success": True, "message": f"Weight version updated to {new}", "new_version": new}
    )


# ---- status -------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[CORE].alive() else 503)


async def flush_cache(request: web.Request) -> web.Response:
    """Drop the prefix cache (requests running keep their pages until they end)."""
    core = request.app[CORE]
    await _on_core(request, core.flush_cache)
    return web.Response(text="Cache flushed.\n", status=200)


async def get_model_info(request: web.Request) -> web.Response:
    core = request.app[CORE]
    info = dict(request.app[INFO])
    info.pop("dist_timeout_s", None)
    info.update(
        {
            "is_generation": True,
            "weight_version": core.weight_version,
            "preferred_sampling_params": None,
            "max_running_requests": core.max_running,
            "context_length": core.context_length,
            "vocab_size": core.vocab_size,
            "device_uuid": _device_uuid(core),  # not SGLang's: lets a colocated trainer use CUDA IPC
            **core.load(),
            "forge_stats": core.stats(),  # not SGLang's: utilisation counters for Forge's metrics
            "forge_engine": {  # not SGLang's: how this engine runs
                "attention": core.runner.attention,
                "fused": core.runner.fused,
                "cuda_graph": core.runner.use_cuda_graph,
                "page_size": core.page_size,
                "prefix_cache": core.cache.enabled,
            },
        }
    )
    return web.json_response(info)


def _device_uuid(core: EngineCore) -> str:
    from forge.ground.cuda_ipc import device_uuid

    device = core.runner.device
    return device_uuid(device.index or 0) if device.type == "cuda" else ""


def build_app(core: EngineCore, info: dict[str, Any]) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=256 * 1024 * 1024)
    app[CORE] = core
    app[INFO] = info
    app[GROUPS] = {}
    r = app.router
    r.add_route("POST", "/generate", generate)
    r.add_route("PUT", "/generate", generate)
    r.add_post("/abort_request", abort_request)
    r.add_post("/pause_generation", pause_generation)
    r.add_post("/continue_generation", continue_generation)
    r.add_post("/update_weights_from_disk", update_weights_from_disk)
    r.add_post("/init_weights_update_group", init_weights_update_group)
    r.add_post("/destroy_weights_update_group", destroy_weights_update_group)
    r.add_post("/update_weights_from_distributed", update_weights_from_distributed)
    r.add_post("/update_weights_from_tensor", update_weights_from_tensor)
    r.add_post("/update_weight_version", update_weight_version)
    for path in ("/health", "/health_generate", "/ready"):
        r.add_get(path, health)
    r.add_route("GET", "/flush_cache", flush_cache)
    r.add_post("/flush_cache", flush_cache)
    r.add_get("/get_model_info", get_model_info)
    r.add_get("/model_info", get_model_info)
    return app
