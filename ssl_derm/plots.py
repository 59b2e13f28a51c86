"""PNG plots for sweeps and the demo report (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _numeric_key(keys: list, summary: list):
    """The grid key to put on the x axis: numeric with several values (e.g. the label fraction)."""
    for k in keys:
        vals = {s[0][k] for s in summary}
        if len(vals) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            return k
    return None


def plot_sweep(root, keys: list, metric_keys: list, summary: list) -> list:
    """summary: [(values dict, n seeds, {metric: (mean, std)})]. One PNG per metric under ``root/plots``.

    With a numeric grid key (label fraction, image size) the plot is a curve per setting of the other
    keys (label-efficiency curves); otherwise a bar per grid point (e.g. segmentation score per method).
    """
    out = Path(root) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    xkey = _numeric_key(keys, summary)
    for mk in metric_keys:
        fig, ax = plt.subplots(figsize=(6, 4))
        if xkey:
            lines: dict = {}
            for values, _, stats in summary:
                label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items() if k != xkey) or mk
                lines.setdefault(label, []).append((values[xkey], *stats[mk]))
            for label, pts in sorted(lines.items()):
                pts.sort()
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=3, label=label)
            xs = sorted({s[0][xkey] for s in summary})
            if xs[0] > 0 and xs[-1] / xs[0] >= 10:
                ax.set_xscale("log")
            ax.set_xlabel(xkey)
            ax.legend(fontsize=7)
        else:
            labels = [", ".join(f"{k.split('.')[-1]}={v}" for k, v in s[0].items()) for s in summary]
            ax.bar(range(len(summary)), [s[2][mk][0] for s in summary], yerr=[s[2][mk][1] for s in summary], capsize=3)
            ax.set_xticks(range(len(summary)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(mk)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{mk.replace('.', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
