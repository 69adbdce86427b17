"""Figures (matplotlib, Agg), ``report.md`` and the terminal summary of a study run.

The report opens with the verdict table (one row per claim: effect, confidence interval, seeds,
verdict), states the verdict rule fixed before the run, then shows one figure per claim: the
per-seed paired differences with their mean and confidence interval beside the margin band, and
the quantities the difference was computed from on an honest axis (accuracy axes start at the
chance level or at the raw-input probe, whichever is lower).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from otcl.experiments.claims import Claim
from otcl.experiments.stats import VerdictRule

__all__ = ["make_figures", "summary_table", "write_report"]

LOSS_COLORS = {
    "INCE": "#4c72b0",
    "GCA-INCE": "#55a868",
    "RINCE": "#c44e52",
    "GCA-RINCE": "#8172b2",
    "GCA-UOT": "#dd8452",
    "GCA-capacity": "#937860",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "figure.dpi": 110, "savefig.bbox": "tight"})
    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    path = out / name
    fig.savefig(path)
    _plt().close(fig)
    return name


# --------------------------------------------------------------------------------------------
# figures


def fig_kl_curve(res: dict, out: Path) -> str:
    plt = _plt()
    eq = res["equivalences"]
    curves = [("random embeddings", eq["kl_curve_random"])]
    if "kl_curve_trained" in eq:
        curves.append(("trained INCE encoder, held-out samples", eq["kl_curve_trained"]))
    fig, axes = plt.subplots(2, len(curves), figsize=(5.6 * len(curves), 7.0), squeeze=False)
    n_iter = res["config"]["loss"]["n_iter"]
    k_gca = 2 * n_iter + 1
    for col, (title, c) in enumerate(curves):
        kl = np.asarray(c["kl"])
        k = np.arange(1, len(kl) + 1)
        odd = k % 2 == 1
        ax = axes[0][col]
        ax.plot(k, kl, "-", color="0.3", lw=1.2, zorder=1)
        ax.scatter(k[odd], kl[odd], s=18, color="#4c72b0", label="after a row step", zorder=2)
        ax.scatter(k[~odd], kl[~odd], s=18, color="#dd8452", label="after a column step",
                   zorder=2)
        ax.scatter([1], [kl[0]], s=90, facecolors="none", edgecolors="k", zorder=3,
                   label="k = 1: InfoNCE")
        if k_gca <= len(kl):
            ax.scatter([k_gca], [kl[k_gca - 1]], s=90, marker="D", facecolors="none",
                       edgecolors="#55a868", zorder=3,
                       label=f"k = {k_gca}: GCA-INCE ({n_iter} rounds)")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylabel("KL(I || P^(k)) / N")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        excess = kl - kl[-1]
        keep = excess > 0
        ax.semilogy(k[keep], excess[keep], "o-", ms=3, color="#4c72b0")
        ax.set_xlabel("half-step k")
        ax.set_ylabel(f"KL(k) - KL({len(kl)})  (log scale)")
        ax.set_title("distance to the last value")
    fig.suptitle("Section 1: KL to the target plan over Sinkhorn half-steps")
    fig.tight_layout()
    return _save(fig, out, "equivalences_kl_curve.png")


def fig_curves(res: dict, out: Path) -> str:
    plt = _plt()
    curves = res["contrastive"]["curves"]
    settings = list(curves)
    losses = list(curves[settings[0]])
    fig, axes = plt.subplots(1, len(losses), figsize=(3.2 * len(losses), 3.0), squeeze=False)
    for ax, name in zip(axes[0], losses, strict=True):
        for s, setting in enumerate(settings):
            runs = [np.asarray(c) for c in curves[setting][name]]
            n = min(len(c) for c in runs)
            mean = np.mean([c[:n] for c in runs], axis=0)
            ax.plot(np.arange(1, n + 1), mean, label=setting,
                    ls=["-", "--", "-.", ":"][s % 4])
        ax.set_title(name)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("training loss (mean over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Section 2: training curves")
    fig.tight_layout()
    return _save(fig, out, "contrastive_training_curves.png")


def fig_domain(res: dict, out: Path) -> str:
    plt = _plt()
    dom = res["domain"]
    sweep = [s for s in dom["sweep"] if s["delta"] is not None]
    ident = next((s for s in dom["sweep"] if s["delta"] is None), None)
    d = np.array([s["delta"] for s in sweep])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), sharey=True)
    for ax, space, title in ((axes[0], "z", "embedding z (where the target acts)"),
                             (axes[1], "h", "backbone features h")):
        for key, color, label in ((f"domain_acc_{space}", "#c44e52", "domain probe"),
                                  (f"class_acc_{space}", "#4c72b0", "class probe")):
            m = np.array([s[key]["mean"] for s in sweep])
            sd = np.array([s[key]["std"] for s in sweep])
            ax.errorbar(d, m, yerr=sd, fmt="o-", color=color, capsize=3, label=label)
            if ident is not None:
                ax.axhline(ident[key]["mean"], color=color, ls=":", lw=1,
                           label=f"{label}, target I")
        ax.axhline(1.0 / dom["data"]["n_domains"], color="0.5", ls="--", lw=0.8,
                   label="domain chance")
        ax.set_xlabel("alpha - beta (row totals; alpha + beta = "
                      f"{2 * res['config']['domain_base']:g})")
        ax.set_title(title)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Section 3: GCA-INCE with the domain prior I + alpha·same + beta·cross")
    return _save(fig, out, "domain_prior.png")


def fig_claim(claim: Claim, out: Path) -> str | None:
    """Left: per-seed effects, their mean and CI, zero and the margin; right: the parts."""
    if claim.effect is None or claim.effect.n == 0:
        return None
    plt = _plt()
    e = claim.effect
    s = claim.scale
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6), gridspec_kw={"width_ratios": [1, 1.6]})
    ax = axes[0]
    vals = np.asarray(e.values) * s
    jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
    ax.scatter(jitter, vals, s=16, color="0.45", zorder=2, label="per seed")
    if math.isfinite(e.low) and math.isfinite(e.high):
        ax.errorbar([0.35], [e.mean * s], yerr=[[(e.mean - e.low) * s], [(e.high - e.mean) * s]],
                    fmt="o", color="k", capsize=5, zorder=3, label="mean, 95% CI")
    ax.axhline(0.0, color="k", lw=0.8)
    m = claim.margin * s
    if claim.direction == "at_most":
        ax.axhline(m, color="#c44e52", ls="--", lw=1, label=f"claimed bound {m:g}{claim.unit}")
    elif m > 0:
        ax.axhspan(-m, m, color="#55a868", alpha=0.12, label=f"±{m:g}{claim.unit} margin")
    ax.set_xlim(-0.5, 0.7)
    ax.set_xticks([])
    ax.set_ylabel(f"{claim.effect_label}" + (f" ({claim.unit.strip()})" if claim.unit else ""),
                  fontsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"verdict: {claim.verdict}", fontsize=10)
    ax = axes[1]
    names = list(claim.parts)
    for i, name in enumerate(names):
        v = np.asarray(claim.parts[name], dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        color = LOSS_COLORS.get(name, "#4c72b0")
        xs = i + np.linspace(-0.15, 0.15, v.size) if v.size > 1 else np.full(1, float(i))
        ax.scatter(xs, v, s=12, color=color, alpha=0.6)
        if v.size > 1:
            from scipy.stats import t as student_t

            half = float(student_t.ppf(0.975, v.size - 1)) * v.std(ddof=1) / math.sqrt(v.size)
            ax.errorbar([i + 0.3], [v.mean()], yerr=[half], fmt="s", color=color, capsize=4)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel(claim.parts_label, fontsize=8)
    lo, hi = ax.get_ylim()
    if claim.floor is not None:
        lo = claim.floor
        ax.axhline(claim.floor, color="0.5", ls=":", lw=1)
    if claim.ceiling is not None:
        hi = claim.ceiling
    if claim.reference is not None:
        ax.axhline(claim.reference[1], color="k", ls="--", lw=1, label=claim.reference[0])
        ax.legend(fontsize=7, loc="upper right")
    ax.set_ylim(lo, hi)
    ax.set_title("the values compared (mean, 95% CI)", fontsize=10)
    fig.suptitle(claim.claim if len(claim.claim) < 110 else claim.claim[:107] + "...",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, out, f"claim_{claim.key}.png")


def fig_views(res: dict, out: Path, examples: dict[str, Any] | None) -> str | None:
    """Example samples and their two views (MNIST-1D signals or digits images)."""
    if not examples:
        return None
    plt = _plt()
    x, v1, v2, labels = (np.asarray(examples[k]) for k in ("x", "v1", "v2", "labels"))
    fp1, fp2 = examples.get("fp_v1"), examples.get("fp_v2")
    n = len(x)
    image = res["contrastive"]["data"]["name"] == "digits"
    cols = n + (1 if fp1 is not None else 0)
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 2.6), squeeze=False)
    for i in range(n):
        ax = axes[0][i]
        if image:
            ax.imshow(np.concatenate([x[i].reshape(8, 8), v1[i].reshape(8, 8),
                                      v2[i].reshape(8, 8)], axis=1), cmap="gray_r")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.plot(x[i], color="k", lw=2, label="sample")
            ax.plot(v1[i], color="#4c72b0", lw=1, label="view 1")
            ax.plot(v2[i], color="#dd8452", lw=1, label="view 2")
        ax.set_title(f"digit {int(labels[i])}", fontsize=9)
    if fp1 is not None:
        ax = axes[0][-1]
        ax.plot(np.asarray(fp1), color="#4c72b0", lw=1, label="view 1")
        ax.plot(np.asarray(fp2), color="#c44e52", lw=1, label="'view 2': another digit")
        ax.set_title(f"false pair ({examples['fp_labels'][0]} vs {examples['fp_labels'][1]})",
                     fontsize=9)
        ax.legend(fontsize=6)
    if not image:
        axes[0][0].legend(fontsize=6)
    fig.suptitle("Example samples and their positive views (" + res["contrastive"]["data"]
                 ["name"] + ")", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "views.png")


def fig_row_mass(res: dict, out: Path) -> str | None:
    plt = _plt()
    con = res["contrastive"]
    examples = con.get("row_mass_example", {})
    if not examples:
        return None
    setting = "noisy" if "noisy" in examples else next(iter(examples))
    ex = examples[setting]
    mass = np.asarray(ex["row_mass"])
    flags = np.asarray(ex["corrupted"], dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(mass.min(), mass.max(), 30)
    ax.hist(mass[~flags], bins=bins, alpha=0.6, density=True, label="true pairs")
    ax.hist(mass[flags], bins=bins, alpha=0.6, density=True, label="false pairs")
    ax.set_xlabel("GCA-UOT row mass of the pair (mean of its two rows)")
    ax.set_ylabel("density")
    ax.set_title(f"held-out batch, GCA-UOT encoder, {setting} setting, seed 0", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "contrastive_row_mass.png")


def make_figures(res: dict[str, Any], out: Path, claims: list[Claim] | None = None,
                 examples: dict[str, Any] | None = None) -> list[str]:
    """Write every figure the results support into ``out``; return their file names."""
    names: list[str | None] = []
    for c in claims or []:
        names.append(fig_claim(c, out))
    if "contrastive" in res:
        names += [fig_views(res, out, examples), fig_row_mass(res, out), fig_curves(res, out)]
    if "equivalences" in res:
        names.append(fig_kl_curve(res, out))
    if "domain" in res:
        names.append(fig_domain(res, out))
    return [n for n in names if n is not None]


# --------------------------------------------------------------------------------------------
# text


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ci_text(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    from otcl.experiments.stats import paired_effect

    e = paired_effect(values)
    if not math.isfinite(e.mean):
        return "n/a"
    if e.n < 2:
        return f"{e.mean * scale:.{digits}f}"
    return f"{e.mean * scale:.{digits}f} ± {e.half_width * scale:.{digits}f}"


def _verdict_rows(claims: list[Claim]) -> list[list[str]]:
    rows = []
    for c in claims:
        hw = ("-" if c.effect is None or c.effect.n < 2
              else f"{c.effect.half_width * c.scale:.2f}{c.unit}")
        rows.append([c.claim, c.paper, c.effect_label or "tolerance check", c.effect_text(),
                     str(c.effect.n if c.effect else "-"), hw, f"**{c.verdict}**"])
    return rows


def _resolution(claims: list[Claim]) -> str:
    """The largest CI half-width among the accuracy-type effects (what the run can resolve)."""
    hw = [(c.effect.half_width * c.scale, c.key) for c in claims
          if c.effect is not None and c.effect.n >= 2 and c.unit == " pt"]
    if not hw:
        return ""
    worst, key = max(hw)
    return (f"Resolution: the widest 95% interval among the accuracy effects has a half-width of "
            f"{worst:.2f} pt ({key}); narrower than 1 pt means a 1-point difference would be "
            f"resolved.")


def _margins_text(res: dict[str, Any]) -> str:
    """The configuration's margins in the units the report shows the effects in: accuracy
    margins in points (R^2 as is for ``latents``), the step-time overhead in percent."""
    metric = res.get("contrastive", {}).get("data", {}).get("metric")
    parts = []
    for key, value in res["config"]["margins"].items():
        if key == "score" and metric == "r2":
            parts.append(f"score {value:g} of R^2 ({100 * value:g} pt for accuracies)")
        elif key == "score":
            parts.append(f"score {100 * value:g} pt of accuracy")
        elif key == "overhead":
            parts.append(f"overhead {100 * value:g}% of step time")
        else:
            parts.append(f"{key} {value:g}")
    return ", ".join(parts)


def _contrastive_md(res: dict) -> list[str]:
    con = res["contrastive"]
    d = con["data"]
    scale = 100.0 if d["metric"] == "accuracy" else 1.0
    what = "probe accuracy (%)" if d["metric"] == "accuracy" else "R^2 of latent recovery"
    lines = [
        "## Contrastive training",
        "",
        f"Dataset **{d['name']}**: {d['n_train']} training and {d['n_test']} test samples of "
        f"dimension {d['dim']}. Views: {d['views']}. Raw-input {what}: "
        f"**{d['raw_probe'] * scale:.2f}**. Settings: "
        + ", ".join(f"{s['name']} ({100 * s['fp_fraction']:g}% false-positive pairs)"
                    for s in res["config"]["settings"])
        + ". Values are mean ± 95% CI half-width over seeds.",
        "",
        "Problem: every loss is called as `loss(z1, z2)` on the two views of a batch of N "
        "samples, the SimCLR problem of all 2N views (self-pairs excluded, the other view the "
        "positive; `otcl.torch` modules with their default layout).",
        "",
    ]
    metrics = [("probe", what, scale, 2), ("uniformity", "uniformity", 1.0, 3),
               ("alignment", "alignment", 1.0, 3), ("auc_row_mass", "AUC row mass", 1.0, 3),
               ("auc_cosine", "AUC cosine", 1.0, 3), ("step_seconds", "ms / step", 1000.0, 1)]
    for setting, per in con["settings"].items():
        lines += [f"**{setting}**", ""]
        rows = [[name] + [_ci_text(rec[m]["values"], sc, dg) for m, _, sc, dg in metrics]
                for name, rec in per.items()]
        lines += [_table(["loss"] + [t for _, t, _, _ in metrics], rows), ""]
    return lines


def _domain_md(res: dict) -> list[str]:
    dom = res["domain"]
    rows = []
    for s in dom["sweep"]:
        rows.append([s["label"], f"{s['alpha']:.2f}", f"{s['beta']:.2f}"]
                    + [_ci_text(s[k]["values"], 100, 1) for k in
                       ("domain_acc_z", "class_acc_z", "domain_acc_h", "class_acc_h")])
    raw = dom["raw_features"]
    return [
        "## Domain prior",
        "",
        f"GCA-INCE on synthetic data with {dom['data']['n_domains']} known domains and "
        f"{dom['data']['n_classes']} classes, target I + alpha·same domain + beta·other domain "
        "on the cross-view N x N problem (`layout=\"cross\"`: the target is defined per pair of "
        "samples). "
        f"Raw features: domain {100 * raw['domain_acc']:.1f}%, class "
        f"{100 * raw['class_acc']:.1f}%.",
        "",
        _table(["alpha - beta", "alpha", "beta", "domain acc z (%)", "class acc z (%)",
                "domain acc h (%)", "class acc h (%)"], rows),
        "",
    ]


def _cifar_md(res: dict) -> list[str]:
    c = res["cifar10"]
    rows = []
    for name, rec in c["losses"].items():
        rows.append([name, f"{c['poster']['standard'].get(name, math.nan):.2f}",
                     f"{c['poster']['noisy'].get(name, math.nan):.2f}",
                     _ci_text(rec["values"], 100, 2), str(len(rec["values"]))])
    return [
        "## CIFAR-10",
        "",
        f"ResNet-18 (CIFAR variant) per loss: {c['n_train']} training and {c['n_test']} test "
        f"images, {c['epochs']} epoch(s), batch {c['batch_size']}, device {c['device']}, mixed "
        f"precision {c['amp']}. Raw-pixel probe: {100 * c['raw_probe']:.2f}%. The poster's "
        "numbers come from 500-epoch runs with a 200-epoch linear evaluation (GCA-NOTES §6.1), "
        "so only the order of the losses can be compared, and only with enough epochs.",
        "",
        _table(["loss", "poster CIFAR-10 standard (%)", "poster noisy (%)",
                "this run: probe accuracy (%)", "seeds"], rows),
        "",
    ]


def write_report(res: dict[str, Any], claims: list[Claim], out: Path) -> Path:
    """Write ``report.md``: verdict table, rule, a figure per claim, then the measurements."""
    cfg = res["config"]
    meta = res["meta"]
    rule = VerdictRule(level=cfg.get("level", 0.95))
    figs = set(res.get("figures", []))
    lines = [
        "# otcl study report",
        "",
        f"`{meta['command']}`: {meta['seconds'] / 60:.1f} min on {meta['device']} "
        f"({meta['threads']} thread(s) per process, {meta.get('jobs', 1)} process(es), "
        f"{meta['cpu_count']} CPUs), otcl {meta['otcl_version']}, torch "
        f"{meta['torch_version']}. Dataset: **{cfg['dataset']}**, {cfg['n_seeds']} paired "
        "seeds.",
        "",
        "## Verdicts",
        "",
        _table(["claim", "paper", "effect", "effect [95% CI]", "seeds", "CI half-width",
                "verdict"], _verdict_rows(claims)),
        "",
        _resolution(claims),
        "",
        "**Verdict rule** (fixed in the configuration before the run): " + rule.describe()
        + " Margins X: " + _margins_text(res) + ".",
        "",
        "## Claims",
        "",
    ]
    for c in claims:
        lines += [f"### {c.claim}", "", f"Verdict: **{c.verdict}**. Effect "
                  f"({c.effect_label or 'tolerance check'}): {c.effect_text()}. {c.detail}", ""]
        name = f"claim_{c.key}.png"
        if name in figs:
            lines += [f"![{c.key}]({name})", ""]
    if "contrastive" in res:
        lines += _contrastive_md(res)
        for name, caption in (("views.png", "Example views"),
                              ("contrastive_row_mass.png", "Row masses of true and false pairs"),
                              ("contrastive_training_curves.png", "Training curves")):
            if name in figs:
                lines += [f"![{caption}]({name})", ""]
    if "cifar10" in res:
        lines += _cifar_md(res)
    if "domain" in res:
        lines += _domain_md(res)
        if "domain_prior.png" in figs:
            lines += ["![domain prior](domain_prior.png)", ""]
    if "equivalences" in res:
        eq = res["equivalences"]
        lines += ["## Equivalences", "",
                  f"{sum(r['holds'] for r in eq['records'])}/{len(eq['records'])} identity checks "
                  f"hold on {', '.join(eq['backends'])} (n = {eq['n']}, d = {eq['d']}, eps = "
                  f"{eq['eps']:g}).", ""]
        if "equivalences_kl_curve.png" in figs:
            lines += ["![KL curve](equivalences_kl_curve.png)", ""]
    lines += ["## Run", "", "Seconds per section: " + ", ".join(
        f"{k} {v:.0f}" for k, v in meta["section_seconds"].items())
        + f". Platform: {meta['platform']}, Python {meta['python']}.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def summary_table(res: dict[str, Any], claims: list[Claim]) -> str:
    """A plain-text verdict table for the terminal."""
    width = max((len(c.key) for c in claims), default=5)
    lines = []
    if "cifar10" in res:
        c = res["cifar10"]
        lines += [f"CIFAR-10 probe accuracy (%): {'loss':10s} poster  this run"]
        lines += [f"  {name:10s} {c['poster']['standard'].get(name, math.nan):6.2f}  "
                  f"{100 * rec['probe_accuracy']:6.2f}" for name, rec in c["losses"].items()]
        lines.append("")
    lines += [f"{'claim':{width}s}  {'effect [95% CI]':34s}  n   verdict"]
    for c in claims:
        n = str(c.effect.n) if c.effect else "-"
        lines.append(f"{c.key:{width}s}  {c.effect_text():34s}  {n:3s} {c.verdict}")
    return "\n".join(lines)
