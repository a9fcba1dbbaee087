"""`forge report run_dir=…`: PNG plots of a run's main curves, from its metrics.jsonl (no W&B needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = (
    ("reward", ["reward/mean"]),
    ("accuracy", ["accuracy/mean"]),
    ("tokens/s", ["rollout/generated_tokens_per_s", "train/trained_tokens_per_s"]),
    ("tree token ratio", ["train/token_ratio"]),
    ("staleness (weight versions)", ["pool/lag_versions_mean", "pool/lag_versions_max"]),
    ("clip fraction", ["train/clip_fraction"]),
    ("entropy", ["train/entropy"]),
    ("grad norm", ["train/grad_norm"]),
    (
        "time per phase (s)",
        ["time/forward_backward_s", "time/optimizer_s", "time/weight_sync_s", "time/step_wall_s"],
    ),
)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="forge report", description=__doc__)
    p.add_argument("run_dir", help="run_dir=PATH or PATH")
    p.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/report.png)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir.removeprefix("run_dir="))
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        p.error(f"{path} does not exist: is {run_dir} a Forge run directory?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        p.error(f"{path} is empty: the run has not finished a step yet")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for ax, (title, keys) in zip(axes.flat, PANELS, strict=True):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=key.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    summary = run_dir / "summary.json"
    if summary.exists():
        fig.suptitle(f"{run_dir.name}: {json.loads(summary.read_text())}", fontsize=9)
    fig.tight_layout()
    out = Path(args.out) if args.out else run_dir / "report.png"
    fig.savefig(out, dpi=90)
    print(out)
    return 0
