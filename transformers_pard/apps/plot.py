"""A bench report as one picture: tokens/s per method, accepted lengths, time per phase.

``python -m transformers_pard plot REPORT.json --out FILE.png`` (or ``bench --plot FILE.png``) draws
three panels from a report written by ``bench --json``, so the README's picture can be regenerated
from a committed results file without rerunning anything. Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

from .benchmark import PHASES

#: Figure size in inches at ``DPI``: a 1500 x 450 pixel PNG.
FIGSIZE, DPI = (15.0, 4.5), 100
PHASE_COLOURS = {"draft": "tab:orange", "verify": "tab:blue", "other": "tab:gray"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("Plotting needs matplotlib: `pip install matplotlib` "
                         "(or `pip install -e \".[plot]\"`).") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def tokens_panel(ax, methods: dict) -> None:
    names = list(methods)
    rates = [m.get("tokens_per_s") or m["median_tokens_per_s"] for m in methods.values()]
    bars = ax.bar(names, rates, color=["tab:gray" if n == "plain" else "tab:green" for n in names])
    for bar, m in zip(bars, methods.values()):
        ax.annotate(f"{m['speedup_vs_plain']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tokens/s (total)")
    ax.set_title("throughput (label: speedup vs plain)")
    ax.tick_params(axis="x", labelrotation=30)


def label(ax, drawn: bool, *, empty: str, ylabel: str, title: str) -> None:
    """A legend where something was drawn, else ``empty`` in the middle of the panel."""
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def histogram_panel(ax, methods: dict) -> None:
    """Share of rounds that committed n tokens (n = 1 .. K+1), per drafting method (AR+ always commits 1)."""
    drawn = {n: m["acceptance_histogram"] for n, m in methods.items() if m.get("acceptance_histogram")
             and n != "ar-plus"}
    width = 0.8 / max(len(drawn), 1)
    for i, (name, hist) in enumerate(drawn.items()):
        total = sum(hist[1:]) or 1
        xs = [n + (i - (len(drawn) - 1) / 2) * width for n in range(1, len(hist))]
        ax.bar(xs, [c / total for c in hist[1:]], width=width, label=name)
    if drawn:
        ax.set_xticks(range(1, max(len(h) for h in drawn.values())))
    ax.set_xlabel("tokens committed in a round")
    label(ax, bool(drawn), empty="no drafting method in this report", ylabel="share of rounds",
          title="accepted length")


def phase_panel(ax, methods: dict) -> None:
    """Stacked draft / verify / other milliseconds per round."""
    timed = {n: m["phase_ms_per_round"] for n, m in methods.items() if m.get("phase_ms_per_round")}
    bottoms = [0.0] * len(timed)
    for phase in PHASES:
        values = [phases[phase] for phases in timed.values()]
        ax.bar(list(timed), values, bottom=bottoms, label=phase, color=PHASE_COLOURS[phase])
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.tick_params(axis="x", labelrotation=30)
    label(ax, bool(timed), empty="no phase times in this report", ylabel="ms per round", title="time per phase")


def caption(report: dict) -> str:
    env, settings = report.get("environment", {}), report.get("settings", {})
    machine = env.get("cuda") or f"{env.get('processor', '?')} CPU, {env.get('cpu_threads', '?')} threads"
    return (f"{settings.get('target', 'target ?')} | {machine} | dtype {settings.get('dtype', '?')} | "
            f"K={settings.get('k', '?')} | {settings.get('max_new_tokens', '?')} new tokens | "
            f"torch {env.get('torch', '?')}")


def render(report: dict, path: str) -> None:
    """Write the three panels of ``report`` to ``path`` (PNG, ``FIGSIZE`` at ``DPI``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE, dpi=DPI)
    tokens_panel(axes[0], report["methods"])
    histogram_panel(axes[1], report["methods"])
    phase_panel(axes[2], report["methods"])
    fig.suptitle(caption(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
