"""`layoutja plot`: loss curves (held-out losses, with and without layout, and dev F1, when
logged) of training runs as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from layoutja.common import UserError


def plot_runs(runs: list[Path], out: Path) -> None:
    """One loss curve per run directory (its metrics.jsonl), its held-out loss dotted and the
    same without layout dash-dotted; dev F1 on a second axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    f1_axis = None
    for run in runs:
        path = run / "metrics.jsonl" if run.is_dir() else run
        try:
            rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot read training metrics: {e}") from None
        color = f"C{runs.index(run)}"  # a run's loss and F1 share a colour
        losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        if losses:
            loss_axis.plot(*zip(*losses), color=color, label=f"{run.name} loss")
        for key, style in (("eval_loss", ":"), ("eval_loss_without_layout", "-.")):
            held_out = [(r["step"], r[key]) for r in rows if key in r]
            if held_out:
                loss_axis.plot(*zip(*held_out), style, color=color, label=f"{run.name} {key}")
        f1 = [(r["step"], r["dev_macro_f1"]) for r in rows if "dev_macro_f1" in r]
        if f1:
            f1_axis = f1_axis or loss_axis.twinx()
            f1_axis.plot(*zip(*f1), "--", color=color, label=f"{run.name} dev macro F1")
            f1_axis.set_ylabel("dev macro F1")
            f1_axis.set_ylim(0, 1)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    handles = loss_axis.get_legend_handles_labels()
    if f1_axis:
        extra = f1_axis.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    loss_axis.legend(*handles, loc="upper right")
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
