"""Verdicts on the paper's claims, computed from the measured numbers by a rule fixed in advance.

Each claim is reduced to one paired effect per seed (e.g. GCA-INCE's probe accuracy minus INCE's,
both trained from the same initial weights on the same views), summarised by its mean and Student-t
confidence interval
([`otcl.experiments.stats.paired_effect`][otcl.experiments.stats.paired_effect]), and judged by the
configuration's [`VerdictRule`][otcl.experiments.stats.VerdictRule] against the claim's margin
(``StudyConfig.margins``). The exact identities of section 1 are judged against their numerical
tolerances instead. Nothing is worded as a success unless the interval says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from otcl.experiments.config import LOSS_NAMES
from otcl.experiments.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NO_EFFECT,
    SUPPORTED,
    Effect,
    VerdictRule,
    paired_effect,
)

__all__ = ["CONTRADICTED", "INCONCLUSIVE", "NO_EFFECT", "SUPPORTED", "Claim", "assess_claims"]


@dataclass(frozen=True)
class Claim:
    """One claim: the statement, the paper's number, the effect with its interval, the verdict.

    ``direction``: +1 / -1 (the claimed sign of the effect), 0 (no effect), ``"at_most"`` or
    ``"exact"`` (an identity checked against tolerances); ``margin``: the claim's ``X``;
    ``scale`` and ``unit``: how the effect is displayed (e.g. 100 and " pt" for accuracies);
    ``parts``: the per-seed values the effect was computed from (for the claim's figure),
    ``floor``: the honest bottom of their axis (chance level or raw-input probe) and
    ``reference``: a labelled level drawn across them (the raw-input probe).
    """

    key: str
    claim: str
    paper: str
    verdict: str
    detail: str
    effect: Effect | None = None
    direction: int | str = 1
    margin: float = 0.0
    scale: float = 1.0
    unit: str = ""
    effect_label: str = ""
    parts: dict[str, list[float]] = field(default_factory=dict)
    parts_label: str = ""
    floor: float | None = None
    ceiling: float | None = None
    reference: tuple[str, float] | None = None

    def effect_text(self, digits: int = 2) -> str:
        e = self.effect
        if e is None or not math.isfinite(e.mean):
            return "-"
        m = e.mean * self.scale
        if e.n < 2:
            return f"{m:+.{digits}f}{self.unit} (1 seed)"
        return (f"{m:+.{digits}f}{self.unit} [{e.low * self.scale:+.{digits}f}, "
                f"{e.high * self.scale:+.{digits}f}]")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key, "claim": self.claim, "paper": self.paper, "verdict": self.verdict,
            "detail": self.detail, "direction": self.direction, "margin": self.margin,
            "effect_label": self.effect_label, "unit_scale": self.scale, "unit": self.unit,
            "effect": None, "ci": None, "n_seeds": 0,
        }
        if self.effect is not None:
            d = self.effect.as_dict()
            out.update(effect=d["effect"], ci=d["ci"], n_seeds=d["n_seeds"],
                       half_width=d["half_width"], values=d["values"])
        if self.parts:
            out["parts"] = self.parts
        return out


def _judge(rule: VerdictRule, values: list[float], direction: int | str, margin: float,
           scale: float = 1.0, unit: str = "") -> tuple[Effect, str]:
    """The paired effect of ``values`` and its verdict (a margin in the verdict text is shown as
    the effect is: times ``scale``, followed by ``unit``)."""
    eff = paired_effect(values, rule.level)
    return eff, rule.verdict(eff, direction, margin, scale=scale, unit=unit)


def _rule(res: dict) -> VerdictRule:
    return VerdictRule(level=float(res["config"].get("level", 0.95)))


def _margins(res: dict) -> dict[str, float]:
    return dict(res["config"].get("margins") or {"score": 0.01, "uniformity": 0.05,
                                                  "auc": 0.02, "overhead": 0.05})


def _values(res: dict, setting: str, loss: str, metric: str) -> list[float]:
    return [float(v) for v in res["contrastive"]["settings"][setting][loss][metric]["values"]]


def _diff(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _equivalence_claims(res: dict) -> list[Claim]:
    eq = res["equivalences"]
    bad = [f"{r['name']} on {r['backend']} (gap {r['gap']:.2e} > tol {r['tol']:.0e})"
           for r in eq["records"] if not r["holds"]]
    n = len(eq["records"])
    out = [Claim(
        "infonce_is_kl_projection",
        "InfoNCE equals KL(I || row-projection of K) / N, and the other identities "
        "(Pythagorean step, GCA-RINCE(1) = RINCE, UOT row masses) hold",
        "exact identities",
        SUPPORTED if not bad and n else CONTRADICTED,
        f"{n - len(bad)}/{n} checks hold on {', '.join(eq['backends'])}."
        + ("" if not bad else " Failing: " + "; ".join(bad)),
        direction="exact",
    )]
    curves = {"random": eq["kl_curve_random"]}
    if "kl_curve_trained" in eq:
        curves["trained"] = eq["kl_curve_trained"]
    parts, ok = [], True
    for name, c in curves.items():
        tol = 1e-9 * max(1.0, abs(c["first"]))
        mono = c["max_rise"] <= tol
        ok = ok and mono and c["last"] <= c["first"] + tol
        trend = "never increases" if mono else f"rises by up to {c['max_rise']:.2e}"
        parts.append(f"{name} embeddings: {c['first']:.4f} -> {c['last']:.4f} ({trend})")
    out.append(Claim(
        "kl_monotone",
        "KL(I || P^(k)) does not increase with Sinkhorn half-steps k, so GCA-INCE <= INCE at "
        "the same parameters",
        "KL(I||P^(inf)) <= KL(I||P^(1))",
        SUPPORTED if ok else CONTRADICTED,
        "; ".join(parts) + ".",
        direction="exact",
    ))
    return out


def _score_units(res: dict) -> tuple[float, str, str]:
    metric = res["contrastive"]["data"]["metric"]
    if metric == "r2":
        return 1.0, "", "R^2 of latent recovery"
    return 100.0, " pt", "probe accuracy"


def _contrastive_claims(res: dict) -> list[Claim]:
    con = res["contrastive"]
    rule, mg = _rule(res), _margins(res)
    scale, unit, what = _score_units(res)
    settings = list(con["settings"])
    first = settings[0]
    losses = list(con["settings"][first])
    raw = float(con["data"]["raw_probe"])
    floor = float(con["data"].get("floor", 0.0))
    top = 1.0
    out: list[Claim] = []

    # sanity check: every loss beats the raw input
    per_seed_min = np.min([_values(res, first, name, "probe") for name in losses], axis=0)
    eff, verdict = _judge(rule, [v - raw for v in per_seed_min], 1, mg["score"], scale, unit)
    out.append(Claim(
        "training_helps",
        f"Contrastive training beats the raw input's {what} (the worst loss of each seed; "
        "a sanity check, not a claim of the paper)",
        "-", verdict,
        f"Raw input: {raw * scale:.2f}{(unit.strip() and '%') or ''}. Mean {what} per loss "
        f"({first}): " + ", ".join(
            f"{n} {np.mean(_values(res, first, n, 'probe')) * scale:.2f}" for n in losses) + ".",
        eff, 1, mg["score"], scale, unit, f"worst loss - raw input ({what})",
        {n: _values(res, first, n, "probe") for n in losses}, what, min(floor, raw), top,
        ("raw input", raw),
    ))

    for setting in settings:
        per = con["settings"][setting]
        if "INCE" in per and "GCA-INCE" in per:
            vals = _diff(_values(res, setting, "GCA-INCE", "probe"),
                         _values(res, setting, "INCE", "probe"))
            eff, verdict = _judge(rule, vals, 1, mg["score"], scale, unit)
            out.append(Claim(
                f"gca_ince_vs_ince_{setting}",
                f"GCA-INCE gives a better {what} than INCE ({setting} setting)",
                "CIFAR-10: 92.36 vs 92.01 (standard); 82.18 vs 82.03 (noisy)", verdict,
                f"Paired difference GCA-INCE - INCE over {eff.n} seeds.",
                eff, 1, mg["score"], scale, unit, f"GCA-INCE - INCE ({what})",
                {n: _values(res, setting, n, "probe") for n in ("INCE", "GCA-INCE")}, what,
                min(floor, raw), top, ("raw input", raw),
            ))
        if "GCA-UOT" in per and len(per) > 1:
            # the paper's claim ranks its five losses; losses beyond them are not rivals here
            means = {n: float(np.mean(_values(res, setting, n, "probe"))) for n in per
                     if n in LOSS_NAMES}
            rival = max((n for n in means if n != "GCA-UOT"), key=lambda n: means[n])
            vals = _diff(_values(res, setting, "GCA-UOT", "probe"),
                         _values(res, setting, rival, "probe"))
            eff, verdict = _judge(rule, vals, 1, mg["score"], scale, unit)
            ranking = ", ".join(f"{k} {v * scale:.2f}" for k, v in
                                sorted(means.items(), key=lambda kv: -kv[1]))
            out.append(Claim(
                f"gca_uot_best_{setting}",
                f"GCA-UOT gives the best {what} of the five losses ({setting} setting)",
                "CIFAR-10: 92.61 (standard), 83.18 (noisy), best in both", verdict,
                f"Compared with the strongest other loss by mean, {rival}. Means: {ranking}.",
                eff, 1, mg["score"], scale, unit, f"GCA-UOT - {rival} ({what})",
                {n: _values(res, setting, n, "probe") for n in means}, what, min(floor, raw), top,
                ("raw input", raw),
            ))

    per = con["settings"][first]
    if "INCE" in per and "GCA-INCE" in per:
        vals = _diff(_values(res, first, "GCA-INCE", "uniformity"),
                     _values(res, first, "INCE", "uniformity"))
        eff, verdict = _judge(rule, vals, -1, mg["uniformity"])
        out.append(Claim(
            f"uniformity_{first}",
            f"Multi-step GCA-INCE embeddings are more uniform than INCE's ({first} setting)",
            "higher uniformity after more iterations (no number given)", verdict,
            "Wang-Isola uniformity log E exp(-2|z - z'|^2) of the test embeddings; lower is more "
            "uniform, so the claim is a negative difference.",
            eff, -1, mg["uniformity"], 1.0, "", "GCA-INCE - INCE (uniformity)",
            {n: _values(res, first, n, "uniformity") for n in ("INCE", "GCA-INCE")},
            "uniformity (lower = more uniform)", None, None,
        ))

    if "standard" in settings and "noisy" in settings and "INCE" in per:
        def drop(name: str) -> list[float]:
            return _diff(_values(res, "standard", name, "probe"),
                         _values(res, "noisy", name, "probe"))

        base = drop("INCE")
        for name in ("RINCE", "GCA-RINCE", "GCA-UOT", "GCA-capacity"):
            if name not in per:
                continue
            vals = _diff(base, drop(name))
            eff, verdict = _judge(rule, vals, 1, mg["score"], scale, unit)
            paper = ("CIFAR-10 noisy: GCA-UOT 83.18, GCA-RINCE 82.76, RINCE 82.60 vs INCE 82.03"
                     if name in LOSS_NAMES else
                     "- (beyond the paper: a bound on each negative pair's plan mass)")
            out.append(Claim(
                f"robust_{name.lower().replace('-', '_')}",
                f"{name} loses less {what} than INCE when 20% of positive pairs are false",
                paper,
                verdict,
                f"Drop from the standard to the noisy setting: INCE {np.mean(base) * scale:.2f}"
                f"{unit}, {name} {np.mean(drop(name)) * scale:.2f}{unit}; the effect is INCE's "
                f"drop minus {name}'s.",
                eff, 1, mg["score"], scale, unit, f"drop(INCE) - drop({name})",
                {"INCE": base, name: drop(name)}, f"drop in {what}", None, None,
            ))

    noisy = "noisy" if "noisy" in settings else settings[-1]
    if "GCA-UOT" in con["settings"][noisy]:
        auc = _values(res, noisy, "GCA-UOT", "auc_row_mass")
        cos = _values(res, noisy, "GCA-UOT", "auc_cosine")
        eff, verdict = _judge(rule, [a - 0.5 for a in auc], 1, mg["auc"])
        out.append(Claim(
            "row_mass_flags_false_positives",
            "GCA-UOT's row masses flag false-positive pairs (AUC above 0.5)",
            "adaptive weighting of positives (qualitative)", verdict,
            f"GCA-UOT encoder of the {noisy} setting, held-out batch with "
            f"{100 * res['config']['auc_fp_fraction']:g}% false pairs; mean AUC row mass "
            f"{np.mean(auc):.3f}, pair cosine {np.mean(cos):.3f}.",
            eff, 1, mg["auc"], 1.0, "", "AUC(row mass) - 0.5",
            {"row mass": auc, "cosine": cos}, "detection AUC", 0.0, 1.0,
        ))
        eff, verdict = _judge(rule, _diff(auc, cos), 1, mg["auc"])
        out.append(Claim(
            "row_mass_vs_cosine",
            "The row mass flags false pairs better than the pair's cosine similarity "
            "(a comparison, not a claim of the paper)",
            "-", verdict,
            "Both scores read the same GCA-UOT embeddings of the same held-out batch.",
            eff, 1, mg["auc"], 1.0, "", "AUC(row mass) - AUC(cosine)",
            {"row mass": auc, "cosine": cos}, "detection AUC", 0.0, 1.0,
        ))

    pairs = [("GCA-INCE", "INCE"), ("GCA-RINCE", "RINCE")]
    have = [(a, b) for a, b in pairs if a in per and b in per]
    if have:
        a, b = have[0]
        ratio = [x / y - 1.0 for x, y in zip(_values(res, first, a, "step_seconds"),
                                             _values(res, first, b, "step_seconds"), strict=True)]
        eff, verdict = _judge(rule, ratio, "at_most", mg["overhead"], 100.0, "%")
        extra = ""
        if len(have) > 1:
            a2, b2 = have[1]
            r2 = [x / y - 1.0 for x, y in zip(_values(res, first, a2, "step_seconds"),
                                              _values(res, first, b2, "step_seconds"),
                                              strict=True)]
            extra = f" {a2} vs {b2}: {100 * np.mean(r2):+.0f}%."
        n_iter = res["config"]["loss"]["n_iter"]
        out.append(Claim(
            "overhead",
            f"Multi-step GCA adds at most {100 * mg['overhead']:g}% time per training step "
            "over its one-step counterpart",
            "about +1% per epoch (GPU, ResNet backbones)", verdict,
            f"Median time of a training step on one batch, the losses timed in turn "
            f"({res['config'].get('timing_rounds', 10)} rounds after "
            f"{res['config']['warmup_steps']} warm-up rounds), {a} vs {b}, {n_iter} Sinkhorn "
            f"rounds.{extra} With a tiny encoder the loss is a large share of each step, so this "
            "is an upper bound on what a real backbone sees.",
            eff, "at_most", mg["overhead"], 100.0, "%", f"{a} / {b} step time - 1",
            {n: _values(res, first, n, "step_seconds") for n in (b, a)}, "seconds per step",
            0.0, None,
        ))
    return out


def _domain_claims(res: dict) -> list[Claim]:
    dom = res["domain"]
    rule, mg = _rule(res), _margins(res)
    sweep = [s for s in dom["sweep"] if s["delta"] is not None]
    if len(sweep) < 2:
        return []
    lo, hi = sweep[0], sweep[-1]
    out = []
    for key, metric, direction, text in (
        ("domain_prior", "domain_acc_z", 1,
         "With the domain prior, domain accuracy rises with alpha - beta"),
        ("domain_prior_class_flat", "class_acc_z", 0,
         "... while class accuracy stays flat"),
    ):
        vals = _diff([float(v) for v in hi[metric]["values"]],
                     [float(v) for v in lo[metric]["values"]])
        eff, verdict = _judge(rule, vals, direction, mg["score"], 100.0, " pt")
        out.append(Claim(
            key, f"{text} (alpha - beta from {lo['delta']:+g} to {hi['delta']:+g})",
            "PACS: domain 0.72 -> 0.95 over alpha-beta in [-0.5, 0.5]; class 0.89-0.905",
            verdict,
            f"Linear probes of the embeddings z; per seed, the accuracy at alpha - beta = "
            f"{hi['delta']:+g} minus that at {lo['delta']:+g}. Means along the sweep: "
            + ", ".join(f"{s['delta']:+g}: {100 * s[metric]['mean']:.1f}%" for s in sweep) + ".",
            eff, direction, mg["score"], 100.0, " pt", f"{metric} at {hi['delta']:+g} - at "
            f"{lo['delta']:+g}",
            {f"{s['delta']:+g}": [float(v) for v in s[metric]["values"]] for s in sweep},
            metric.replace("_", " "), 0.0, 1.0,
        ))
    return out


def assess_claims(res: dict[str, Any]) -> list[Claim]:
    """All claims that the sections present in ``res`` can speak to."""
    out: list[Claim] = []
    if "equivalences" in res:
        out += _equivalence_claims(res)
    if "contrastive" in res:
        out += _contrastive_claims(res)
    if "domain" in res:
        out += _domain_claims(res)
    return out
