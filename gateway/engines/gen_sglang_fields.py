"""Generate `sglang_fields.json`: the request field names SGLang's HTTP server accepts, from its source.

SGLang cannot be installed on Forge's machines (see the README), so the contract test
(`tests/engines/test_contract.py`) checks our client's requests against this file instead. It is
made from the released `sglang` wheel on PyPI, which is downloaded (no dependencies, nothing
installed or imported) and read with `ast`:

- `sglang/srt/managers/io_struct.py`: the request dataclasses/structs the HTTP routes parse
  (GenerateReqInput, UpdateWeightFromDiskReqInput, InitWeightsUpdateGroupReqInput, ...);
- `sglang/srt/sampling/sampling_params.py`: SamplingParams (what `sampling_params` becomes);
- `sglang/api/v1/api_types.py`: the generated JSON contract that `/generate` checks bodies
  against (its SamplingParams *rejects* unknown keys);
- `sglang/srt/entrypoints/http_server.py`: the routes, their methods and body types;
- `sglang/srt/arg_groups/field_order.py`: the ServerArgs fields, whose CLI flags
  (`--model-path`, ...) `python -m sglang.launch_server` takes (the launcher's contract).

    python -m gateway.engines.gen_sglang_fields --version 0.5.23 [--wheel PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

DEFAULT_VERSION = "0.5.23"
OUT = Path(__file__).with_name("sglang_fields.json")

IO_STRUCT = "sglang/srt/managers/io_struct.py"
SAMPLING = "sglang/srt/sampling/sampling_params.py"
API_TYPES = "sglang/api/v1/api_types.py"
HTTP_SERVER = "sglang/srt/entrypoints/http_server.py"
WATERMARK = "sglang/srt/sampling/watermarking/core.py"
FIELD_ORDER = "sglang/srt/arg_groups/field_order.py"

# Request types our client can send, and the routes it uses.
IO_CLASSES = [
    "GenerateReqInput",
    "UpdateWeightFromDiskReqInput",
    "InitWeightsUpdateGroupReqInput",
    "DestroyWeightsUpdateGroupReqInput",
    "UpdateWeightsFromDistributedReqInput",
    "UpdateWeightsFromTensorReqInput",
    "UpdateWeightVersionReqInput",
    "AbortReq",
    "PauseGenerationReqInput",
    "ContinueGenerationReqInput",
    "FlushCacheReqInput",
]
CONTRACT_CLASSES = ["GenerateRequest", "SamplingParams", "WatermarkRequestConfig"]
# SamplingParams fields set by SGLang itself (normalize()/__post_init__), not by API callers.
SAMPLING_INTERNAL = {
    "stop_strs",
    "stop_regex_strs",
    "stop_str_max_len",
    "stop_regex_max_len",
    "is_normalized",
    "ebnf_full_assistant",
}


def _class_fields(tree: ast.Module) -> dict[str, dict[str, Any]]:
    """Every class's annotated attributes (its own), its base names and its docstring."""
    out: dict[str, dict[str, Any]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = [
            stmt.target.id
            for stmt in node.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        ]
        bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        out[node.name] = {"fields": fields, "bases": bases, "doc": ast.get_docstring(node) or ""}
    return out


def _all_fields(classes: dict[str, dict[str, Any]], name: str) -> list[str]:
    """Fields of `name` including those inherited from bases defined in the same module."""
    info = classes[name]
    fields: list[str] = []
    for base in info["bases"]:
        if base in classes:
            fields += [f for f in _all_fields(classes, base) if f not in fields]
    return fields + [f for f in info["fields"] if f not in fields]


def _routes(tree: ast.Module) -> dict[str, dict[str, Any]]:
    """Route path → methods and the body type named in the handler's signature."""
    routes: dict[str, dict[str, Any]] = {}
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body_type = None
        for arg in node.args.args:
            ann = arg.annotation
            if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) == "Annotated":
                elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
                ann = elts[0]
            if isinstance(ann, ast.Name) and ann.id != "Request" and ann.id.endswith(("ReqInput", "Req")):
                body_type = body_type or ann.id
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)):
                continue
            if not (isinstance(dec.func.value, ast.Name) and dec.func.value.id == "app"):
                continue
            if not dec.args or not isinstance(dec.args[0], ast.Constant):
                continue
            path, verb = dec.args[0].value, dec.func.attr
            if verb == "api_route":
                methods = next(
                    (ast.literal_eval(k.value) for k in dec.keywords if k.arg == "methods"), ["GET"]
                )
            elif verb in ("get", "post", "put", "delete"):
                methods = [verb.upper()]
            else:
                continue
            routes[path] = {"methods": sorted(methods), "body": body_type}
    return routes


def build(files: dict[str, str], version: str, source: dict[str, Any]) -> dict[str, Any]:
    io_classes = _class_fields(ast.parse(files[IO_STRUCT]))
    sampling_classes = _class_fields(ast.parse(files[SAMPLING]))
    contract_classes = _class_fields(ast.parse(files[API_TYPES]))
    watermark_classes = _class_fields(ast.parse(files[WATERMARK])) if WATERMARK in files else {}

    dataclasses = {name: _all_fields(io_classes, name) for name in IO_CLASSES}
    sampling_all = _all_fields(sampling_classes, "SamplingParams")
    dataclasses["SamplingParams"] = [f for f in sampling_all if f not in SAMPLING_INTERNAL]
    if "WatermarkRequestConfig" in watermark_classes:
        dataclasses["WatermarkRequestConfig"] = _all_fields(watermark_classes, "WatermarkRequestConfig")

    contract = {}
    for name in CONTRACT_CLASSES:
        info = contract_classes[name]
        contract[name] = {
            "fields": info["fields"],
            "unknown_keys": "rejected" if "unknown keys rejected" in info["doc"] else "ignored",
        }
    return {
        "sglang_version": version,
        "source": source,
        "generated_by": "python -m gateway.engines.gen_sglang_fields",
        "files": [IO_STRUCT, SAMPLING, API_TYPES, HTTP_SERVER, FIELD_ORDER],
        "dataclasses": dataclasses,
        "sampling_params_internal_fields": sorted(SAMPLING_INTERNAL & set(sampling_all)),
        "json_contract": contract,
        "nested": {
            "GenerateReqInput.sampling_params": "SamplingParams",
            "SamplingParams.watermark": "WatermarkRequestConfig",
        },
        "routes": _routes(ast.parse(files[HTTP_SERVER])),
        "server_flags": _server_flags(files[FIELD_ORDER]),
    }


def _server_flags(source: str) -> list[str]:
    """`--flag` names of ServerArgs (field model_path → --model-path), from the field-order tuple."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            names = [
                e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
            return sorted("--" + n.replace("_", "-") for n in names if not n.startswith("_"))
    raise ValueError("no field tuple in field_order.py")


def download_wheel(version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), f"sglang=={version}"]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(f"sglang-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"no sglang {version} wheel downloaded into {dest}")
    return wheels[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--wheel", type=Path, help="an sglang wheel already downloaded (else pip download)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(args.version, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            files = {
                p: zf.read(p).decode()
                for p in (IO_STRUCT, SAMPLING, API_TYPES, HTTP_SERVER, WATERMARK, FIELD_ORDER)
                if p in names
            }
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    source = {"pypi_wheel": wheel.name, "sha256": digest}
    data = build(files, args.version, source)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} (sglang {args.version}, {len(data['routes'])} routes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
