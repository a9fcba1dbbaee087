"""Environment registry: name → (environment class, config dataclass).

    from agent_side.registry import register_env, get_env, make_config
    register_env("my_env", MyEnv)             # or @register_env("my_env") on the class
    spec = get_env("arithmetic")              # EnvSpec(name, env_class, config_class)
    cfg = make_config("arithmetic", {"difficulty": 3})

Config classes are dataclasses of plain fields, so the launch driver can put them in Hydra's
ConfigStore (`store_hydra_configs()`, group "env") and hand the resolved mapping back to
`make_config`. Built-in environments register on import of `agent_side.envs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent_side.env import BlackBoxEnv, EnvConfig, Environment

EnvClass = type[Environment] | type[BlackBoxEnv]


@dataclass(frozen=True)
class EnvSpec:
    name: str
    env_class: EnvClass
    config_class: type[EnvConfig]

    @property
    def white_box(self) -> bool:
        return issubclass(self.env_class, Environment)


_REGISTRY: dict[str, EnvSpec] = {}
_BUILTINS_LOADED = False


def register_env(name: str, env_class: EnvClass | None = None, *, replace: bool = False) -> Any:
    """Register `env_class` under `name` (usable as a decorator when `env_class` is omitted)."""

    def _register(cls: EnvClass) -> EnvClass:
        if not (issubclass(cls, Environment) or issubclass(cls, BlackBoxEnv)):
            raise TypeError(f"{cls.__name__} is neither an Environment nor a BlackBoxEnv")
        config_class = cls.config_class
        if not (dataclasses.is_dataclass(config_class) and issubclass(config_class, EnvConfig)):
            raise TypeError(f"{cls.__name__}.config_class must be an EnvConfig dataclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.env_class is not cls and not replace:
            raise ValueError(f"environment {name!r} is already registered to {existing.env_class.__name__}")
        _REGISTRY[name] = EnvSpec(name, cls, config_class)
        return cls

    if env_class is None:
        return _register
    return _register(env_class)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import agent_side.envs  # noqa: F401  (registers the built-ins)


def get_env(name: str) -> EnvSpec:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown environment {name!r}; registered: {sorted(_REGISTRY)}") from None


def env_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def make_config(name: str, overrides: Mapping[str, Any] | EnvConfig | None = None) -> EnvConfig:
    """The config of environment `name`: defaults, updated from a mapping (e.g. a resolved Hydra node)."""
    spec = get_env(name)
    if isinstance(overrides, spec.config_class):
        return overrides
    if isinstance(overrides, EnvConfig):
        overrides = dataclasses.asdict(overrides)
    values = dict(overrides or {})
    values.pop("name", None)  # a Hydra node may carry the env name beside the fields
    fields = {f.name for f in dataclasses.fields(spec.config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"environment {name!r} has no config fields {unknown}; it has {sorted(fields)}")
    return spec.config_class(**values)


def load_env_modules(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import modules that register environments, so a worker process (a Ray actor) knows them:
    dotted module names ("my_pkg.envs") or paths to .py files."""
    import importlib
    import importlib.util
    from pathlib import Path

    for module in modules:
        if module.endswith(".py"):
            path = Path(module).resolve()
            name = f"forge_env_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load environment module {module!r}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(module)


def store_hydra_configs(group: str = "env", store: Callable[..., Any] | None = None) -> list[str]:
    """Put every registered environment's config dataclass into Hydra's ConfigStore under `group`."""
    if store is None:
        from hydra.core.config_store import ConfigStore

        store = ConfigStore.instance().store
    names = env_names()
    for name in names:
        store(group=group, name=name, node=get_env(name).config_class)
    return names
