"""`curves.png` of a run directory: loss, learning rate and evaluation metrics against steps,
drawn from its `metrics.jsonl` (training rows, and `{"step", "eval": {...}}` rows)."""

import json
from collections.abc import Sequence
from pathlib import Path


def plot_metrics(metrics_path: Path, out: Path, *,
                 eval_keys: Sequence[str] = ("zeroshot_top1", "i2t_r1", "t2i_r1")) -> None:
    """Writes one PNG with three panels; `eval_keys` are the evaluation metrics drawn (those
    present), all in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval" in r]
    fig, (loss_ax, lr_ax, eval_ax) = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in train]
    loss_ax.plot(steps, [r["loss"] for r in train])
    loss_ax.set(title="training loss", xlabel="step", yscale="log")
    lr_ax.plot(steps, [r.get("lr", float("nan")) for r in train])
    lr_ax.set(title="learning rate", xlabel="step")
    drawn = False
    for key in eval_keys:
        points = [(r["step"], r["eval"][key]) for r in evals if key in r["eval"]]
        if points:
            eval_ax.plot(*zip(*points), marker="o", label=key)
            drawn = True
    eval_ax.set(title="evaluation", xlabel="step", ylim=(0, 1))
    if drawn:
        eval_ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
