"""Run monitoring: W&B (offline into the run dir by default), a live console line, metrics.jsonl.

Every step's metrics go to all three. `forge report` reads metrics.jsonl, so a run can be
plotted without W&B.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

LIVE_KEYS = (
    ("step", "step", "{:.0f}"),
    ("reward", "reward/mean", "{:.3f}"),
    ("acc", "accuracy/mean", "{:.3f}"),
    ("gen tok/s", "rollout/generated_tokens_per_s", "{:.0f}"),
    ("train tok/s", "train/trained_tokens_per_s", "{:.0f}"),
    ("tree ×", "train/token_ratio", "{:.2f}"),
    ("stale", "pool/mean_lag_versions", "{:.2f}"),
    ("phase", "phase", "{}"),
)


class RunMonitor:
    def __init__(self, mode: str, project: str, run_dir: Path, config: Any, console: bool = True) -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.console = Console(stderr=True)
        self.latest: dict[str, Any] = {"phase": "starting"}
        self.wandb = None
        if mode != "none":
            os.environ.setdefault("WANDB_SILENT", "true")
            if mode == "offline" or not os.environ.get("WANDB_API_KEY"):
                os.environ["WANDB_MODE"] = "offline"
            import wandb

            cfg = asdict(config) if is_dataclass(config) else config
            self.wandb = wandb.init(
                project=project,
                dir=str(run_dir),
                config=cfg,
                resume="allow",
                id=_run_id(run_dir),
                reinit=True,
            )
        self.live = Live(self._table(), console=self.console, refresh_per_second=2) if console else None
        if self.live:
            self.live.start()

    def phase(self, name: str) -> None:
        self.latest["phase"] = name
        self._refresh()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step)
        self.latest.update(record)
        self._refresh()
        if not self.live:
            self.console.print(self._line())

    def table(self, step: int, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.wandb is not None and rows:
            import wandb

            self.wandb.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(values)
        (self.run_dir / "summary.json").write_text(json.dumps(values, indent=2))

    def print(self, text: str) -> None:
        (self.live.console if self.live else self.console).print(text)

    def close(self) -> None:
        if self.live:
            self.live.stop()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def _line(self) -> str:
        parts = []
        for label, key, fmt in LIVE_KEYS:
            if key in self.latest:
                try:
                    parts.append(f"{label} {fmt.format(self.latest[key])}")
                except (TypeError, ValueError):
                    parts.append(f"{label} {self.latest[key]}")
        return "  ".join(parts)

    def _table(self) -> Table:
        t = Table(title="forge", expand=False)
        for label, _, _ in LIVE_KEYS:
            t.add_column(label)
        row = []
        for _, key, fmt in LIVE_KEYS:
            v = self.latest.get(key, "")
            try:
                row.append(fmt.format(v) if v != "" else "")
            except (TypeError, ValueError):
                row.append(str(v))
        t.add_row(*row)
        return t

    def _refresh(self) -> None:
        if self.live:
            self.live.update(self._table())


def _run_id(run_dir: Path) -> str:
    path = run_dir / ".wandb_id"
    if path.exists():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id
