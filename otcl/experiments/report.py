"""Figures (matplotlib, Agg), ``report.md`` and the terminal summary of a study run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from otcl.experiments.claims import Claim
from otcl.experiments.data import AUGMENTATIONS

__all__ = ["make_figures", "summary_table", "write_report"]

LOSS_COLORS = {
    "INCE": "#4c72b0",
    "GCA-INCE": "#55a868",
    "RINCE": "#c44e52",
    "GCA-RINCE": "#8172b2",
    "GCA-UOT": "#dd8452",
}
SETTING_MARKERS = ["o", "s", "^", "D", "v"]


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
        curves.append(("trained INCE encoder, held-out digits", eq["kl_curve_trained"]))
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


def _setting_names(res: dict) -> list[str]:
    return list(res["contrastive"]["settings"])


def fig_probe(res: dict, out: Path) -> str:
    plt = _plt()
    con = res["contrastive"]
    settings = _setting_names(res)
    losses = list(con["settings"][settings[0]])
    metrics = [("probe", "linear probe, all labels"),
               ("few_shot", f"linear probe, {res['config']['shots']} labels per class")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(settings)
    x = np.arange(len(losses))
    for ax, (metric, title) in zip(axes, metrics, strict=True):
        lo = math.inf
        for s, setting in enumerate(settings):
            means = np.array([con["settings"][setting][name][metric]["mean"] for name in losses])
            stds = np.array([con["settings"][setting][name][metric]["std"] for name in losses])
            lo = min(lo, float(np.nanmin(means - stds)))
            ax.bar(x + (s - (len(settings) - 1) / 2) * width, 100 * means, width,
                   yerr=100 * stds, capsize=3, label=setting, alpha=0.85)
        for name, style in (("raw_pixels", ":"), ("random_encoder", "--")):
            val = con["baselines"][name][metric]
            lo = min(lo, val)
            ax.axhline(100 * val, color="k", ls=style, lw=1,
                       label=name.replace("_", " ") + " (baseline)")
        ax.set_xticks(x, losses, rotation=15)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        top = max([100 * con["settings"][st][name][metric]["mean"] for st in settings
                   for name in losses]
                  + [100 * con["baselines"][b][metric] for b in ("raw_pixels", "random_encoder")])
        ax.set_ylim(max(0.0, 100 * lo - 2), min(100.0, top + 1.5))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9,
               bbox_to_anchor=(0.5, -0.06))
    n = res["config"]["n_seeds"]
    fig.suptitle(f"Section 2: digits, frozen-feature probes (mean ± std over {n} "
                 f"seed{'s' if n > 1 else ''})")
    return _save(fig, out, "contrastive_probe.png")


def fig_align_uniform(res: dict, out: Path) -> str:
    plt = _plt()
    con = res["contrastive"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for s, setting in enumerate(_setting_names(res)):
        for name, rec in con["settings"][setting].items():
            ax.errorbar(rec["alignment"]["mean"], rec["uniformity"]["mean"],
                        xerr=rec["alignment"]["std"], yerr=rec["uniformity"]["std"],
                        fmt=SETTING_MARKERS[s % len(SETTING_MARKERS)],
                        color=LOSS_COLORS.get(name, "k"), ms=7, capsize=2)
    for name, color in LOSS_COLORS.items():
        ax.plot([], [], "s", color=color, label=name)
    for s, setting in enumerate(_setting_names(res)):
        ax.plot([], [], SETTING_MARKERS[s % len(SETTING_MARKERS)], color="0.4", label=setting)
    ax.set_xlabel("alignment  E||z1 - z2||^2  (lower = better aligned)")
    ax.set_ylabel("uniformity  log E exp(-2||zi - zj||^2)  (lower = more uniform)")
    ax.set_title("Section 2: Wang–Isola alignment and uniformity (test set)")
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, out, "contrastive_align_uniform.png")


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
    rec = con["settings"][setting]["GCA-UOT"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    ax = axes[0]
    bins = np.linspace(mass.min(), mass.max(), 30)
    ax.hist(mass[~flags], bins=bins, alpha=0.6, density=True, label="clean pairs")
    ax.hist(mass[flags], bins=bins, alpha=0.6, density=True, label="corrupted pairs")
    ax.set_xlabel("GCA-UOT row mass (P 1)_i")
    ax.set_ylabel("density")
    ax.set_title(f"row masses on a held-out batch (target mass 1)\n{setting} setting, seed 0, "
                 f"AUC {rec['auc_row_mass']['values'][0]:.3f}", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    eps_keys = sorted((float(k.removeprefix("auc_row_mass_eps")), k) for k in rec
                      if k.startswith("auc_row_mass_eps"))
    if eps_keys:
        e = [v for v, _ in eps_keys]
        m = [rec[k]["mean"] for _, k in eps_keys]
        sd = [rec[k]["std"] for _, k in eps_keys]
        ax.errorbar(e, m, yerr=sd, fmt="o-", capsize=3, label="row mass (GCA-UOT, rho fixed)")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(e, [f"{v:g}" for v in e])
    ax.axhline(rec["auc_cosine"]["mean"], color="k", ls="--", lw=1,
               label="positive-pair cosine (baseline)")
    ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance")
    ax.set_xlabel("eps at which the row masses are measured")
    ax.set_ylabel("AUC for flagging corrupted pairs")
    ax.set_ylim(0.3, 1.02)
    ax.set_title("detection AUC of the row masses\nGCA-UOT encoder, mean ± std over seeds",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle("Section 2: do GCA-UOT's row masses flag false-positive pairs?")
    fig.tight_layout()
    return _save(fig, out, "contrastive_row_mass.png")


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


def make_figures(res: dict[str, Any], out: Path) -> list[str]:
    """Write every figure the results support into ``out``; return their file names."""
    names: list[str | None] = []
    if "equivalences" in res:
        names.append(fig_kl_curve(res, out))
    if "contrastive" in res:
        names += [fig_probe(res, out), fig_align_uniform(res, out), fig_row_mass(res, out),
                  fig_curves(res, out)]
    if "domain" in res:
        names.append(fig_domain(res, out))
    return [n for n in names if n is not None]


# --------------------------------------------------------------------------------------------
# text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; ``|`` inside cells is escaped."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(rec: dict, scale: float = 1.0, digits: int = 2) -> str:
    mean, std = rec["mean"], rec["std"]
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if len(rec["values"]) < 2:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _equivalence_md(res: dict) -> list[str]:
    eq = res["equivalences"]
    rows = [[r["backend"], r["name"], "-" if r["lhs"] is None else f"{r['lhs']:.6g}",
             "-" if r["rhs"] is None else f"{r['rhs']:.6g}", f"{r['gap']:.2e}",
             ("≤ " if r["one_sided"] else "|gap| ≤ ") + f"{r['tol']:.0e}",
             "yes" if r["holds"] else "**NO**"] for r in eq["records"]]
    c = eq["kl_curve_random"]
    lines = [
        "## 1. Equivalences on random embeddings",
        "",
        f"Random Gaussian embeddings (N = {eq['n']}, d = {eq['d']}, second view = first + 0.5 ·"
        f" noise, eps = {eq['eps']}), float64, on: {', '.join(eq['backends'])}. Each identity is"
        " computed by two independent routes; one-sided checks (marked ≤) test an inequality.",
        "",
        _table(["backend", "check", "lhs", "rhs", "gap", "tolerance", "holds"], rows),
        "",
        f"KL(I ‖ P^(k)) / N over half-steps on the random batch: {c['first']:.6f} (k = 1, "
        f"InfoNCE) → {c['last']:.6f} (k = {len(c['kl'])}); largest increase between steps "
        f"{c['max_rise']:.1e}.",
    ]
    if "kl_curve_trained" in eq:
        t = eq["kl_curve_trained"]
        lines.append(
            f"On held-out digits embedded by the trained INCE encoder: {t['first']:.6f} → "
            f"{t['last']:.6f}; largest increase {t['max_rise']:.1e}."
        )
    lines += ["", "![KL curve](equivalences_kl_curve.png)", ""]
    return lines


def _contrastive_md(res: dict) -> list[str]:
    con = res["contrastive"]
    cfg = res["config"]
    ls = cfg["loss"]
    lines = [
        "## 2. Contrastive training on digits",
        "",
        f"sklearn digits (8×8, {con['data']['n_train']} train / {con['data']['n_test']} test "
        f"images), MLP encoder 64 → {cfg['hidden']} → {cfg['hidden']} (backbone) → "
        f"{cfg['hidden']} → {cfg['out_dim']} (head), Adam lr {cfg['lr']}, {cfg['epochs']} "
        f"epochs, batch {cfg['batch_size']}, {cfg['n_seeds']} seeds (same seeds for every "
        f"loss, so differences are paired). Losses from `otcl.torch`: eps = {ls['eps']}, "
        f"GCA rounds n_iter = {ls['n_iter']}, RINCE q = {ls['q']}, lam = {ls['lam']}, "
        f"GCA-UOT rho = {ls['rho']}.",
        "",
        "Settings: "
        + "; ".join(f"**{s['name']}** = {s['augmentation']} augmentation with "
                    f"{100 * s['fp_fraction']:.0f}% false-positive pairs"
                    for s in cfg["settings"])
        + ". " + " ".join(f"{name.capitalize()} augmentation: {aug.describe()}."
                          for name, aug in AUGMENTATIONS.items())
        + " A false-positive pair replaces the second view by a view of another image.",
        "",
        "Probes are logistic regressions on frozen standardised backbone features (test "
        "accuracy, %). Few-shot: "
        f"{cfg['shots']} labels per class, mean over {cfg['shot_draws']} draws. Alignment is "
        "measured on standard views of test images; uniformity on test embeddings. AUC: "
        f"held-out batch of {cfg['auc_batch']} test images with "
        f"{100 * cfg['auc_fp_fraction']:.0f}% corrupted pairs, score = −(row mass of GCA-UOT at "
        "the training hyper-parameters), evaluated on every trained encoder; the cosine column"
        " is the plain positive-pair cosine as a baseline detector.",
        "",
    ]
    header = ["setting", "loss", "probe %", "few-shot %", "alignment", "uniformity",
              "AUC row mass", "AUC cosine", "s / run"]
    rows = []
    for setting, per in con["settings"].items():
        for name, rec in per.items():
            rows.append([setting, name, _fmt(rec["probe"], 100), _fmt(rec["few_shot"], 100),
                         _fmt(rec["alignment"], 1, 3), _fmt(rec["uniformity"], 1, 3),
                         _fmt(rec["auc_row_mass"], 1, 3), _fmt(rec["auc_cosine"], 1, 3),
                         f"{rec['train_seconds']['mean']:.1f}"])
    lines += [_table(header, rows), ""]
    b = con["baselines"]
    lines += [
        f"Baselines (no training): raw pixels probe {100 * b['raw_pixels']['probe']:.2f}% "
        f"(few-shot {100 * b['raw_pixels']['few_shot']:.2f}%); randomly initialised encoder "
        f"{100 * b['random_encoder']['probe']:.2f}% "
        f"(few-shot {100 * b['random_encoder']['few_shot']:.2f}%).",
        "",
        "Paired differences against INCE (mean ± std over seeds, percentage points):",
        "",
    ]
    rows = []
    for setting, per in con.get("paired_vs_ince", {}).items():
        for name, rec in per.items():
            rows.append([setting, name, _fmt(rec["probe"], 100), _fmt(rec["few_shot"], 100),
                         _fmt(rec["uniformity"], 1, 3)])
    if rows:
        lines += [_table(["setting", "loss", "Δ probe", "Δ few-shot", "Δ uniformity"], rows),
                  ""]
    lines += [
        "![probe accuracy](contrastive_probe.png)",
        "",
        "![alignment and uniformity](contrastive_align_uniform.png)",
        "",
        "![row masses](contrastive_row_mass.png)",
        "",
        "![training curves](contrastive_training_curves.png)",
        "",
    ]
    return lines


def _domain_md(res: dict) -> list[str]:
    dom = res["domain"]
    cfg = res["config"]
    data = dom["data"]
    rows = []
    for s in dom["sweep"]:
        rows.append([
            "target I" if s["delta"] is None else f"{s['delta']:+g}",
            f"{s['alpha']:g}", f"{s['beta']:g}",
            _fmt(s["domain_acc_z"], 1, 3), _fmt(s["class_acc_z"], 1, 3),
            _fmt(s["domain_acc_h"], 1, 3), _fmt(s["class_acc_h"], 1, 3),
        ])
    raw = dom["raw_features"]
    return [
        "## 3. Domain prior",
        "",
        f"Synthetic data: {data['n_domains']} domains × {data['n_classes']} classes, "
        f"{data['n']} samples in R^{data['dim']} (class signal + domain offset + per-domain "
        "linear distortion + noise). Views add Gaussian jitter, 20% feature dropout and a "
        "random shift along the domain offsets (a 'style' jitter, so views do not preserve the"
        f" domain). GCA-INCE (eps = {cfg['loss']['eps']}, n_iter = {cfg['loss']['n_iter']}), "
        f"batch {data['batch']}, {cfg['domain_epochs']} epochs, {cfg['domain_seeds']} seeds; "
        "target `domain_prior(domains, alpha', beta')` = I + alpha'·same-domain + "
        "beta'·cross-domain, with its own (matched) marginals. alpha and beta below are the "
        "row totals (the per-entry weights are alpha' = alpha / n_same, beta' = beta / n_cross "
        "for the expected numbers of same- and cross-domain entries in a row), so that the "
        "positive pair keeps weight 1 whatever the batch size.",
        "",
        _table(["alpha - beta", "alpha", "beta", "domain acc (z)", "class acc (z)",
                "domain acc (h)", "class acc (h)"], rows),
        "",
        f"Linear probes on the raw inputs: domain {raw['domain_acc']:.3f}, class "
        f"{raw['class_acc']:.3f}; domain chance level {1 / data['n_domains']:.2f}.",
        "",
        "![domain prior](domain_prior.png)",
        "",
    ]


def _claims_md(claims: list[Claim]) -> list[str]:
    rows = [[c.claim, c.paper, c.measured, f"**{c.verdict}**"] for c in claims]
    lines = [
        "## Claims of the paper against these measurements",
        "",
        "Verdicts: **consistent** = the measurement agrees with the claim beyond seed noise "
        "(for comparisons between losses: a two-sided paired t-test over seeds at the 5% "
        "level); **not observed** = the measurement goes the other way, or the effect is "
        "absent; **inconclusive** = within noise. These are toy-scale runs: they test the "
        "direction of the claims, not their size.",
        "",
        _table(["claim", "paper", "measured here", "verdict"], rows),
        "",
        "### Conclusions",
        "",
    ]
    lines += [f"- *{c.claim}* — {c.verdict}. {c.detail}" for c in claims]
    lines.append("")
    return lines


def write_report(res: dict[str, Any], claims: list[Claim], out: Path) -> Path:
    """Write ``report.md`` into ``out`` and return its path."""
    meta = res["meta"]
    lines = [
        "# otcl study: contrastive losses as distribution alignment, at toy scale",
        "",
        f"otcl {meta['otcl_version']}, torch {meta['torch_version']}, device "
        f"`{meta['device']}`, size `{res['config']['size']}`, seed {res['config']['seed']}, "
        f"{meta['seconds']:.0f} s in total. All numbers below are computed by this run; the"
        " raw values are in `results.json`.",
        "",
    ]
    lines += _claims_md(claims)
    if "equivalences" in res:
        lines += _equivalence_md(res)
    if "contrastive" in res:
        lines += _contrastive_md(res)
    if "domain" in res:
        lines += _domain_md(res)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in meta["section_seconds"].items())
    lines += ["## Run", "", f"Time per section: {timing}.", "",
              f"Reproduce: `{meta['command']}`", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def summary_table(res: dict[str, Any], claims: list[Claim]) -> str:
    """A compact plain-text summary for the terminal."""
    lines = []
    if "equivalences" in res:
        eq = res["equivalences"]
        n_ok = sum(r["holds"] for r in eq["records"])
        c = eq["kl_curve_random"]
        lines.append(f"Equivalences: {n_ok}/{len(eq['records'])} hold on "
                     f"{', '.join(eq['backends'])}; KL(I||P^(k)) {c['first']:.4f} -> "
                     f"{c['last']:.4f}")
    if "contrastive" in res:
        con = res["contrastive"]
        settings = list(con["settings"])
        losses = list(con["settings"][settings[0]])
        head = f"{'probe % (mean ± std)':<22}" + "".join(f"{s:>18}" for s in settings)
        lines += ["", head, "-" * len(head)]
        for name in losses:
            lines.append(f"{name:<22}" + "".join(
                f"{_fmt(con['settings'][s][name]['probe'], 100):>18}" for s in settings))
        b = con["baselines"]
        lines.append(f"{'(raw pixels)':<22}{100 * b['raw_pixels']['probe']:>18.2f}")
    if "domain" in res:
        lines += ["", "Domain prior (alpha - beta: domain acc / class acc, on z)"]
        lines.append("  " + ", ".join(
            f"{'I' if s['delta'] is None else format(s['delta'], '+g')}: "
            f"{s['domain_acc_z']['mean']:.2f}/{s['class_acc_z']['mean']:.2f}"
            for s in res["domain"]["sweep"]))
    if claims:
        lines += ["", "Claims:"]
        width = max(len(c.key) for c in claims)
        lines += [f"  {c.key:<{width}}  {c.verdict}" for c in claims]
    return "\n".join(lines)
