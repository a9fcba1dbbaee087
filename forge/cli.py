"""The `forge` command line: launch, serve, bench, models, report, export.

Subcommands are resolved lazily so `forge --help` stays fast and one broken tier cannot
break the others' commands. Each entry maps a name to "module:function"; the function
takes the remaining argv and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "launch": ("forge.launch:main", "run the whole RL loop (Hydra overrides follow)"),
    "serve": ("forge.serve:main", "pool + engine + gateway without training; prints the base URL"),
    "models": ("forge.ground.models:main", "fetch / convert the models Forge ships with"),
    "report": ("forge.report:main", "plot a run's metrics to PNG"),
    "export": ("forge.export:main", "write what a data pool recorded as JSONL or Parquet"),
}

BENCHES: dict[str, tuple[str, str]] = {
    "tree": ("forge.bench.tree:main", "prefix-tree merging vs flat packing: tokens, time, grads"),
    "trainer": ("forge.bench.trainer:main", "tokens/s and MFU of a full DeepSpeed train step"),
    "scheduler": ("forge.bench.scheduler:main", "windowed-FIFO vs strict vs greedy simulation"),
    "pool": ("forge.bench.pool:main", "samples/s through the pool API vs redis-benchmark"),
    "engine": ("forge.bench.engine:main", "built-in engine tokens/s vs model.generate"),
    "gateway": ("forge.bench.gateway:main", "gateway overhead over a direct engine call"),
    "e2e": ("forge.bench.e2e:main", "forge launch end to end: trained tokens/s, time per phase (--peer trl)"),
}


def _call(target: str, argv: list[str]) -> int:
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"forge: {module_name} is not available in this build ({exc})", file=sys.stderr)
            return 2
        raise
    return int(getattr(module, func_name)(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="forge", description="Forge: agent-native RL training for LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    bench.add_argument(
        "name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items())
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        return _call(COMMANDS[command][0], rest)
    if command == "bench":
        if not rest or rest[0] in ("-h", "--help") or rest[0] not in BENCHES:
            parser.parse_args(argv)  # prints usage / the error naming valid benches
            return 2
        return _call(BENCHES[rest[0]][0], rest[1:])
    parser.parse_args(argv)  # unknown command: argparse names it and exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
