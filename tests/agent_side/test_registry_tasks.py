"""Env registry, Hydra config storage, task generation, task files, the held-out eval split."""

import dataclasses
import json
from typing import ClassVar

import pytest

from agent_side.env import EnvConfig, Environment, StepResult
from agent_side.registry import env_names, get_env, make_config, register_env, store_hydra_configs
from agent_side.tasks import is_eval_prompt, load_task_file, make_eval_set, make_tasks


def test_builtins_are_registered_with_plain_configs() -> None:
    assert {"arithmetic", "calculator", "react"} <= set(env_names())
    assert get_env("arithmetic").white_box and not get_env("react").white_box
    for name in ("arithmetic", "calculator", "react"):
        for f in dataclasses.fields(get_env(name).config_class):
            assert f.type in ("int", "float", "str", "bool", "str | None"), (name, f.name, f.type)
    with pytest.raises(KeyError, match="unknown environment"):
        get_env("nope")


def test_make_config_rejects_unknown_fields() -> None:
    cfg = make_config("arithmetic", {"difficulty": 4, "name": "arithmetic"})
    assert cfg.difficulty == 4 and cfg.max_turns == 1
    with pytest.raises(ValueError, match="no config fields"):
        make_config("arithmetic", {"difficulity": 4})


def test_hydra_config_store_round_trip() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    assert "calculator" in store_hydra_configs(group="env_test")
    node = ConfigStore.instance().load("env_test/calculator.yaml").node
    node.speed_reward = 0.3
    with pytest.raises(ValidationError):  # typed: a string where a float belongs is refused
        node.speed_reward = "fast"
    cfg = make_config("calculator", OmegaConf.to_container(node))
    assert cfg.speed_reward == 0.3


def test_registering_a_custom_env() -> None:
    @dataclasses.dataclass
    class EchoConfig(EnvConfig):
        word: str = "hi"

    class Echo(Environment):
        config_class: ClassVar[type[EnvConfig]] = EchoConfig

        @classmethod
        def generate(cls, rng, config):
            return {"question": f"{config.word} {rng.randint(0, 9)}"}

        def reset(self):
            return [{"role": "user", "content": self.payload["question"]}]

        def step(self, reply):
            return StepResult(reward=1.0, done=True)

    register_env("echo_test", Echo)
    register_env("echo_test", Echo)  # idempotent for the same class
    with pytest.raises(ValueError, match="already registered"):
        register_env("echo_test", type("Other", (Echo,), {}))
    with pytest.raises(TypeError):
        register_env("bad_test", dict)  # type: ignore[arg-type]
    tasks = make_tasks("echo_test", 3, seed=1, config={"word": "yo"})
    assert all(t.payload["question"].startswith("yo ") for t in tasks)


def test_make_tasks_groups_ids_and_determinism() -> None:
    tasks = make_tasks("arithmetic", 4, seed=7, group_size=3, config={"difficulty": 3})
    assert len(tasks) == 12 and len({t.id for t in tasks}) == 12
    for g in range(4):
        group = tasks[3 * g : 3 * g + 3]
        assert len({t.group_id for t in group}) == 1 and all(t.group_size == 3 for t in group)
        assert len({json.dumps(t.payload, sort_keys=True) for t in group}) == 1
    assert [t.payload for t in tasks] == [
        t.payload for t in make_tasks("arithmetic", 4, 7, 3, {"difficulty": 3})
    ]
    assert make_tasks("arithmetic", 4, seed=8, config={"difficulty": 3})[0].payload != tasks[0].payload
    # chunked generation gives the same stream
    chunked = make_tasks("arithmetic", 2, 7, 1, {"difficulty": 3}) + make_tasks(
        "arithmetic", 2, 7, 1, {"difficulty": 3}, start=2
    )
    assert [t.payload for t in chunked] == [t.payload for t in tasks[::3]]
    assert [t.id for t in chunked] == [f"arithmetic-s7-p{i}-g0" for i in range(4)]


@pytest.mark.parametrize("env", ["arithmetic", "calculator", "react"])
def test_eval_set_is_held_out(env: str) -> None:
    config = {"difficulty": 2} if env == "arithmetic" else {}
    evals = make_eval_set(env, 60, config=config)
    train = make_tasks(env, 600, seed=0, config=config)
    assert all(is_eval_prompt(t.payload) for t in evals)
    assert not any(is_eval_prompt(t.payload) for t in train)
    assert not {t.payload["question"] for t in evals} & {t.payload["question"] for t in train}
    assert len({t.id for t in evals}) == 60


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_task_files(tmp_path, fmt: str) -> None:
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "source": "file"} for i in range(200)]
    path = tmp_path / f"tasks.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_task_file(path) == rows
    train = make_tasks("arithmetic", 50, seed=0, group_size=2, config={"source": str(path)})
    evals = make_eval_set("arithmetic", 5, config={"source": str(path)})
    assert all(t.payload["source"] == "file" for t in train + evals)
    assert not {t.payload["question"] for t in evals} & {t.payload["question"] for t in train}
    # more prompts than the file's train rows: the stream cycles through a fresh order
    assert len(make_tasks("arithmetic", 400, seed=0, config={"source": str(path)})) == 400


def test_bad_task_files(tmp_path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"question": "q", "answer": "1"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_task_file(bad_json)
    missing = tmp_path / "missing.jsonl"
    missing.write_text("\n".join(json.dumps({"question": f"q{i}"}) for i in range(30)))
    with pytest.raises(ValueError, match="lacks"):
        make_tasks("arithmetic", 1, config={"source": str(missing)})


def test_chunked_streams_from_a_file_match_one_long_stream(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(37)))
    cfg = {"source": str(path)}
    whole = [t.payload for t in make_tasks("arithmetic", 100, seed=2, config=cfg)]
    parts = [
        t.payload for k in range(0, 100, 30) for t in make_tasks("arithmetic", min(30, 100 - k), 2, 1, cfg, k)
    ]
    assert parts == whole
    train_rows = sum(not is_eval_prompt({"question": f"q{i}"}) for i in range(37))
    assert {p["question"] for p in whole[:train_rows]} == {
        p["question"] for p in whole[train_rows : 2 * train_rows]
    }


def test_a_late_start_is_cheap() -> None:
    import time

    t0 = time.perf_counter()
    late = make_tasks("arithmetic", 2, seed=0, start=10**7)
    assert time.perf_counter() - t0 < 0.5 and late[0].id == f"arithmetic-s0-p{10**7}-g0"
