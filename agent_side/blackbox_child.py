"""Run `module:function` as a black-box agent: prompt on stdin, the function's answer on stdout."""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1 or ":" not in argv[0]:
        print("usage: python -m agent_side.blackbox_child package.module:function", file=sys.stderr)
        return 2
    module_name, func_name = argv[0].split(":", 1)
    fn = getattr(importlib.import_module(module_name), func_name)
    result = fn(sys.stdin.read())
    sys.stdout.write("" if result is None else str(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
