"""The demo's PNG: the recommender's online AUC by slice (version changes and the preference
shift marked; the model alone and with its error memory when the memory was on or in shadow)
and, beside it, the assistant's defect rate per round with the rules live."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopwise.tools.demo.assistant import AssistantRound
    from loopwise.tools.demo.recommender import Bucket, ReplayStats


def plot_learning(stats: ReplayStats, table: list[Bucket], png: Path, rounds: list[AssistantRound]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plot: matplotlib is not installed; pip install 'loopwise[bench]')")
        return
    fig, axes = plt.subplots(1, 2 if rounds else 1, figsize=(13 if rounds else 8, 4), squeeze=False)
    ax = axes[0][0]
    x = [b.last for b in table]
    if all(b.auc_memory is not None for b in table):
        ax.plot(x, [b.auc_base for b in table], marker="o", label="model alone")
        ax.plot(x, [b.auc_memory for b in table], marker="s", label="model + error memory")
    else:
        ax.plot(x, [b.auc for b in table], marker="o", label="online AUC")
    if stats.shift_at is not None:
        ax.axvline(stats.shift_at + 1, color="tab:red", linestyle="--", linewidth=1, label="preference shift")
    changes = [i for i in range(1, len(stats.versions)) if stats.versions[i] != stats.versions[i - 1]]
    for i in changes:
        ax.axvline(i + 1, color="grey", linestyle=":", linewidth=1)
        ax.text(i + 1, ax.get_ylim()[0], stats.versions[i], rotation=90, fontsize=7, va="bottom")
    ax.set_xlabel("Rank calls")
    ax.set_ylabel("AUC (progressive)")
    ax.set_title("Recommender: online AUC while it retrains, error memory beside it")
    ax.legend(loc="best", fontsize=8)
    if rounds:
        ax = axes[0][1]
        x = [r.round for r in rounds]
        ax.plot(x, [r.defect_rate for r in rounds], marker="o", color="tab:red", label="defect rate")
        ax.set_xlabel("assistant round (new simulated users)")
        ax.set_ylabel("defect rate per turn")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.bar(x, [max(r.rules_live, 0) for r in rounds], alpha=0.25, color="tab:blue", label="rules live")
        twin.set_ylabel("rewrite rules live at the round's start")
        ax.set_title("Assistant: defects while rewrite rules go live")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"  plot: {png}")
