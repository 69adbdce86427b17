"""The main job: ``otcl study`` end to end at a tiny size, plus its building blocks.

The end-to-end run happens once per module (about 15 s on two cores). Its outputs are checked
against independent computations where one exists: the raw-pixel probe is refitted here with
scikit-learn, the equivalence gaps against their tolerances and the KL curves for monotonicity.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from otcl.cli import main  # noqa: E402
from otcl.experiments.claims import (  # noqa: E402
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    assess_claims,
    compare,
)
from otcl.experiments.config import LOSS_NAMES, preset  # noqa: E402
from otcl.experiments.data import (  # noqa: E402
    Augmentation,
    load_digits_split,
    make_domain_data,
    make_pairs,
)
from otcl.experiments.metrics import alignment, detection_auc, summarize, uniformity  # noqa: E402

FIGURES = (
    "equivalences_kl_curve.png",
    "contrastive_probe.png",
    "contrastive_align_uniform.png",
    "contrastive_row_mass.png",
    "contrastive_training_curves.png",
    "domain_prior.png",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("study") / "out"
    status = main(["study", "--tiny", "--out", str(out), "--no-progress", "--seed", "3"])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    return out, results, (out / "report.md").read_text()


def _walk_numbers(x: object, path: str = "") -> list[tuple[str, float]]:
    if isinstance(x, bool):
        return []
    if isinstance(x, (int, float)):
        return [(path, float(x))]
    if isinstance(x, dict):
        return [n for k, v in x.items() for n in _walk_numbers(v, f"{path}.{k}")]
    if isinstance(x, list):
        return [n for i, v in enumerate(x) for n in _walk_numbers(v, f"{path}[{i}]")]
    return []


@pytest.mark.slow
def test_outputs_exist(study: tuple[Path, dict, str]) -> None:
    out, results, report = study
    for name in FIGURES:
        png = out / name
        assert png.is_file(), name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, name
    assert sorted(results["figures"]) == sorted(FIGURES)
    for name in FIGURES:
        assert f"({name})" in report
    for key in ("config", "meta", "equivalences", "contrastive", "domain", "claims"):
        assert key in results


@pytest.mark.slow
def test_results_are_finite_numbers(study: tuple[Path, dict, str]) -> None:
    _, results, _ = study
    numbers = _walk_numbers({k: v for k, v in results.items() if k != "config"})
    assert len(numbers) > 100
    bad = [p for p, v in numbers if not math.isfinite(v)]
    assert not bad, bad[:5]
    # JSON has no NaN: the file parsed with the strict default would have failed otherwise,
    # and the accuracies are probabilities.
    con = results["contrastive"]
    for setting in con["settings"].values():
        assert sorted(setting) == sorted(LOSS_NAMES)
        for rec in setting.values():
            for metric in ("probe", "few_shot", "auc_row_mass", "auc_cosine"):
                assert 0.0 <= rec[metric]["mean"] <= 1.0
            # Jensen: log E exp(-2 d^2) >= -2 E d^2 >= -4 n / (n - 1) on the unit sphere
            n = con["data"]["n_test"]
            assert -4.0 * n / (n - 1) - 1e-9 <= rec["uniformity"]["mean"] <= 0.0
            assert 0.0 <= rec["alignment"]["mean"] <= 4.0  # |z1 - z2|^2 on the sphere
            assert len(rec["probe"]["values"]) == results["config"]["n_seeds"]


@pytest.mark.slow
def test_equivalence_gaps_small(study: tuple[Path, dict, str]) -> None:
    _, results, _ = study
    eq = results["equivalences"]
    assert {"numpy", "torch-cpu"} <= set(eq["backends"])
    names = {r["name"] for r in eq["records"]}
    assert "infonce_is_row_projection" in names
    for r in eq["records"]:
        assert r["holds"], r
        if r["one_sided"]:
            assert r["gap"] <= r["tol"], r
        else:
            assert abs(r["gap"]) <= r["tol"], r
        if r["name"] == "infonce_is_row_projection":
            assert abs(r["lhs"] - r["rhs"]) <= 1e-10
    for key in ("kl_curve_random", "kl_curve_trained"):
        kl = np.asarray(eq[key]["kl"])
        assert len(kl) == results["config"]["kl_half_steps"]
        assert np.all(np.diff(kl) <= 1e-9 * abs(kl[0])), key
        assert kl[-1] < kl[0]


@pytest.mark.slow
def test_baseline_matches_independent_probe(study: tuple[Path, dict, str]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    _, results, _ = study
    split = load_digits_split(results["config"]["seed"])
    scaler = StandardScaler().fit(split.x_train)
    clf = LogisticRegression(max_iter=5000).fit(scaler.transform(split.x_train), split.y_train)
    acc = clf.score(scaler.transform(split.x_test), split.y_test)
    assert results["contrastive"]["baselines"]["raw_pixels"]["probe"] == pytest.approx(acc,
                                                                                        abs=0.01)
    assert results["contrastive"]["data"]["n_test"] == len(split.y_test)


@pytest.mark.slow
def test_domain_section_structure(study: tuple[Path, dict, str]) -> None:
    _, results, _ = study
    sweep = results["domain"]["sweep"]
    cfg = results["config"]
    assert sweep[0]["delta"] is None and sweep[0]["alpha"] == 0 and sweep[0]["beta"] == 0
    deltas = [s["delta"] for s in sweep[1:]]
    assert deltas == pytest.approx(list(cfg["domain_deltas"]))
    for s in sweep[1:]:
        assert s["alpha"] - s["beta"] == pytest.approx(s["delta"])
        assert s["alpha"] + s["beta"] == pytest.approx(2 * cfg["domain_base"])
        for key in ("domain_acc_z", "class_acc_z", "domain_acc_h", "class_acc_h"):
            assert 0.0 <= s[key]["mean"] <= 1.0


@pytest.mark.slow
def test_report_and_claims_follow_the_numbers(study: tuple[Path, dict, str]) -> None:
    _, results, report = study
    claims = {c["key"]: c for c in results["claims"]}
    assert claims["infonce_is_kl_projection"]["verdict"] == SUPPORTED
    assert claims["kl_monotone"]["verdict"] == SUPPORTED
    # one seed: no paired comparison can be resolved, so it must not be reported as a success
    assert results["config"]["n_seeds"] == 1
    assert claims["gca_ince_vs_ince_standard"]["verdict"] == INCONCLUSIVE
    for c in claims.values():
        assert c["verdict"] in (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
        assert f"**{c['verdict']}**" in report
    assert "## 1. Equivalences" in report and "## 3. Domain prior" in report


def _fake_results(ince: list[float], gca: list[float]) -> dict:
    def rec(values: list[float]) -> dict:
        s = summarize(values)
        return {m: s.as_dict() for m in ("probe", "few_shot", "uniformity", "alignment",
                                          "auc_row_mass", "auc_cosine", "train_seconds")}

    per = {"INCE": rec(ince), "GCA-INCE": rec(gca)}
    base = {"probe": 0.5, "few_shot": 0.5}
    return {"config": {"loss": {"n_iter": 10}},
            "contrastive": {"settings": {"standard": per},
                            "baselines": {"raw_pixels": base, "random_encoder": base}}}


def test_claim_verdicts_depend_on_the_data() -> None:
    better = assess_claims(_fake_results([0.90, 0.91, 0.92], [0.93, 0.94, 0.95]))
    worse = assess_claims(_fake_results([0.93, 0.94, 0.95], [0.90, 0.91, 0.92]))
    noisy = assess_claims(_fake_results([0.90, 0.95, 0.92], [0.95, 0.90, 0.92]))
    verdict = {name: {c.key: c.verdict for c in claims}["gca_ince_vs_ince_standard"]
               for name, claims in (("better", better), ("worse", worse), ("noisy", noisy))}
    assert verdict == {"better": SUPPORTED, "worse": CONTRADICTED, "noisy": INCONCLUSIVE}


def test_compare_is_a_paired_t_test() -> None:
    assert compare([1.0, 1.1, 0.9])[0] == 1
    assert compare([-1.0, -1.1, -0.9])[0] == -1
    assert compare([1.0, -1.0, 0.5])[0] == 0
    assert compare([3.0])[0] == 0  # one seed: never resolved
    # n = 4, t = 3.18: mean 1 with s.e. 0.577 is not resolved, with s.e. 0.289 it is
    assert compare([0.0, 2.0, 0.0, 2.0])[0] == 0
    assert compare([0.5, 1.5, 0.5, 1.5])[0] == 1
    # mean 1, s.e. 0.346: beyond two standard errors, but not beyond t(2) = 4.30 of them
    assert compare([0.4, 1.0, 1.6])[0] == 0
    assert compare([0.9, 1.0, 1.1])[0] == 1


def test_shift_augmentation_matches_roll_with_zero_fill() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(size=(50, 64)).astype(np.float32))
    aug = Augmentation(max_shift=1, noise=0.0, erase=0, erase_prob=0.0)
    gen = torch.Generator().manual_seed(1)
    out = aug(x, gen).numpy().reshape(-1, 8, 8)
    img = x.numpy().reshape(-1, 8, 8)
    for i in range(len(img)):
        matches = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = np.zeros((10, 10), dtype=np.float32)
                ref[1:9, 1:9] = img[i]
                # out[r, c] = padded[r + sy, c + sx] with sy, sx in {0, 1, 2}
                matches.append(np.array_equal(out[i], ref[1 + dy : 9 + dy, 1 + dx : 9 + dx]))
        assert sum(matches) >= 1, i
    assert not np.shares_memory(out, img)


def test_erasing_zeroes_a_square() -> None:
    x = torch.ones(40, 64)
    aug = Augmentation(max_shift=0, noise=0.0, erase=3, erase_prob=1.0)
    out = aug(x, torch.Generator().manual_seed(0)).numpy().reshape(-1, 8, 8)
    for img in out:
        rows, cols = np.nonzero(img == 0)
        assert len(rows) == 9
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
    assert torch.all(x == 1)  # input untouched


def test_false_positive_pairs() -> None:
    x = torch.arange(100, dtype=torch.float32)[:, None] * torch.ones(1, 64) / 100
    aug = Augmentation(max_shift=0, noise=0.0, erase=0, erase_prob=0.0)
    v1, v2, corrupted = make_pairs(x, aug, torch.Generator().manual_seed(0), fp_fraction=0.2)
    assert int(corrupted.sum()) == 20
    same = torch.all(v1 == v2, dim=1)
    assert torch.equal(same, ~corrupted)
    with pytest.raises(ValueError, match="fp_fraction"):
        make_pairs(x, aug, torch.Generator(), fp_fraction=1.0)


def test_uniformity_and_alignment_against_direct_formulas() -> None:
    rng = np.random.default_rng(2)
    z = rng.standard_normal((30, 5))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    direct = np.log(np.mean([np.exp(-2 * np.sum((zn[i] - zn[j]) ** 2))
                             for i in range(30) for j in range(i + 1, 30)]))
    assert uniformity(z) == pytest.approx(direct, rel=1e-12)
    w = z + 0.1 * rng.standard_normal(z.shape)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    assert alignment(z, w) == pytest.approx(np.mean(np.sum((zn - wn) ** 2, axis=1)), rel=1e-12)


def test_detection_auc_orientation() -> None:
    flags = np.array([True, True, False, False, False])
    assert detection_auc(np.array([5.0, 4.0, 1.0, 2.0, 3.0]), flags) == 1.0
    assert detection_auc(np.array([0.0, 0.0, 1.0, 2.0, 3.0]), flags) == 0.0
    assert math.isnan(detection_auc(np.ones(3), np.zeros(3, dtype=bool)))


def test_domain_data_is_balanced_and_seeded() -> None:
    a = make_domain_data(np.random.default_rng(5), n_per_domain=50)
    b = make_domain_data(np.random.default_rng(5), n_per_domain=50)
    np.testing.assert_array_equal(a.x, b.x)
    assert np.bincount(a.domain).tolist() == [50] * 4
    assert np.bincount(a.y).tolist() == [40] * 5
    assert a.offsets.shape == (4, a.x.shape[1])


def test_presets_are_ordered_by_size() -> None:
    tiny, quick, full = preset("tiny"), preset("quick"), preset("full")
    assert tiny.epochs < quick.epochs < full.epochs
    assert tiny.n_seeds <= quick.n_seeds < full.n_seeds
    with pytest.raises(ValueError, match="size"):
        preset("huge")
