"""The benchmark instrument works: its references compute what they claim, its checks can fail,
and a ``--quick`` run of a few cases writes consistent JSON and Markdown."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
if (
    str(ROOT) not in sys.path
):  # ``benchmarks`` is a top-level package of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import baselines as ref  # noqa: E402
from benchmarks.case import run_case  # noqa: E402
from benchmarks.cases import solver_method  # noqa: E402
from benchmarks.common import measure  # noqa: E402
from benchmarks.floors import exp_bound, matvec_floor, read_floor  # noqa: E402
from benchmarks.report import add_ratios  # noqa: E402
from benchmarks.runner import README_END, README_START, median_process, replace_block  # noqa: E402
from benchmarks.suites import build_plan, select  # noqa: E402
from benchmarks.targets import evaluate, largest_batch  # noqa: E402


def _embeddings(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=gen, dtype=torch.float64),
        torch.randn(n, d, generator=gen, dtype=torch.float64),
    )


def _oracle_balanced(s: np.ndarray, eps: float, n_iter: int, partner: np.ndarray) -> float:
    """Direct matrix Sinkhorn on the plan (normalise rows, then columns), the final row step,
    then the cross-entropy of the positives: an independent route to the references' value."""
    plan = np.exp(s / eps)
    for _ in range(n_iter):
        plan = plan / plan.sum(axis=1, keepdims=True)
        plan = plan / plan.sum(axis=0, keepdims=True)
    plan = plan / plan.sum(axis=1, keepdims=True)
    return float(np.mean(-np.log(plan[np.arange(len(partner)), partner])))


def _oracle_unbalanced(s: np.ndarray, eps: float, n_iter: int, rho: float) -> float:
    """POT's unbalanced scaling (``reg_type="entropy"``, unit marginals, exactly ``n_iter``
    rounds from ``v = 1``), then the cross-entropy of the row-normalised plan's diagonal."""
    ot = pytest.importorskip("ot")
    ones = np.ones(len(s))
    with pytest.warns(UserWarning, match="entropy"):
        _, log = ot.unbalanced.sinkhorn_unbalanced(
            ones, ones, -s, eps, rho, reg_type="entropy", numItermax=n_iter, stopThr=0.0, log=True
        )
    kernel, log_v = np.exp(s / eps), log["logv"]
    return float(np.mean(np.log(kernel @ np.exp(log_v)) - np.diag(s) / eps - log_v))


@pytest.mark.parametrize("rho", [math.inf, 0.2])
@pytest.mark.parametrize("n_iter", [0, 1, 7])
def test_cross_view_references_match_independent_sinkhorn(rho: float, n_iter: int) -> None:
    z1, z2 = _embeddings(12)
    s = ref.similarity(z1, z2)
    if math.isinf(rho):
        expected = _oracle_balanced(s.numpy(), 0.5, n_iter, np.arange(12))
    else:
        expected = _oracle_unbalanced(s.numpy(), 0.5, n_iter, rho)
    for fn in (ref.gca_official_style, ref.gca_kernel_autograd, ref.gca_log_autograd):
        assert float(fn(s, 0.5, n_iter, rho)) == pytest.approx(expected, rel=1e-10), fn.__name__


def test_all_views_references_match_direct_sinkhorn_and_nt_xent() -> None:
    z1, z2 = _embeddings(6)
    s = ref.similarity(torch.cat([z1, z2]))
    sn = s.numpy().copy()
    np.fill_diagonal(sn, -np.inf)  # the hard self-mask: K_ii = 0
    partner = (np.arange(12) + 6) % 12
    for n_iter in (0, 5):
        expected = _oracle_balanced(sn, 0.5, n_iter, partner)
        for fn in (ref.gca_official_style, ref.gca_kernel_autograd, ref.gca_log_autograd):
            assert float(fn(s, 0.5, n_iter, all_views=True)) == pytest.approx(expected, rel=1e-10)
    logits = sn / 0.5
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nt_xent = -np.mean(log_softmax[np.arange(12), partner])
    assert float(ref.nt_xent(s, 0.5, all_views=True)) == pytest.approx(nt_xent, rel=1e-12)


def test_nt_xent_plus_passes_returns_nt_xent_and_does_the_passes_of_the_rounds(monkeypatch) -> None:
    z1, z2 = (z.requires_grad_() for z in _embeddings(9))
    calls = []

    class CountingNumpy:
        def __getattr__(self, name: str):
            return getattr(np, name)

        def matmul(self, *args, **kwargs):
            calls.append(args[0].shape)
            return np.matmul(*args, **kwargs)

    monkeypatch.setattr(ref, "np", CountingNumpy())
    n_iter = 3
    value = ref.nt_xent_plus_passes(ref.similarity(z1, z2), 0.5, n_iter)
    value.backward()
    grads = [z1.grad.clone(), z2.grad.clone()]
    z1.grad = z2.grad = None
    ref.nt_xent(ref.similarity(z1, z2), 0.5).backward()
    expected = float(ref.nt_xent(ref.similarity(z1, z2), 0.5).detach())
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(grads, [z1.grad, z2.grad], rtol=0, atol=0)
    # 2L + 1 steps forward and backward, each a product with K or K^T, and the rank product
    assert len(calls) == 2 * (2 * n_iter + 1) + 1
    assert calls[-1] == (9, 2 * n_iter + 1)


def test_paired_products_sweep_large_kernels_in_row_blocks(monkeypatch) -> None:
    seen = []

    class CountingNumpy:
        def __getattr__(self, name: str):
            return getattr(np, name)

        def matmul(self, x, y, out):
            seen.append((x.shape, y.shape))
            return np.matmul(x, y, out=out)

    monkeypatch.setattr(ref, "np", CountingNumpy())
    kernel = np.ones((40, 16), dtype=np.float32)
    ref.paired_products(kernel, 3)  # small: two whole products per pair
    assert seen == [((40, 16), (16,)), ((40,), (40, 16))] * 3
    seen.clear()
    monkeypatch.setattr(ref, "SWEEP_MIN_BYTES", 1024)
    monkeypatch.setattr(ref, "SWEEP_BLOCK_BYTES", 8 * 16 * 4)  # blocks of 8 rows
    ref.paired_products(kernel, 2)
    assert seen == [((8, 16), (16,)), ((8,), (8, 16))] * 5 * 2


def test_official_style_gradient_matches_kernel_autograd() -> None:
    z1, z2 = _embeddings(10)
    grads = []
    for fn in (ref.gca_official_style, ref.gca_kernel_autograd):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        fn(ref.similarity(a, b), 0.5, 4).backward()
        grads.append(torch.cat([a.grad, b.grad]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_all_views_official_style_gradient_is_finite_and_matches_kernel_autograd() -> None:
    z = torch.cat(_embeddings(6))
    grads = []
    for fn in (ref.gca_official_style, ref.gca_kernel_autograd):
        x = z.clone().requires_grad_()
        fn(ref.similarity(x), 0.5, 3, all_views=True).backward()
        grads.append(x.grad)
    assert bool(torch.isfinite(grads[0]).all())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_floors_compute_the_stated_products() -> None:
    rng = np.random.default_rng(1)
    log_k = -rng.random((5, 4))
    g = rng.standard_normal(4)
    buf = np.empty_like(log_k)
    exp_bound(log_k, g, buf, 2, np)
    np.testing.assert_allclose(buf, np.exp(log_k + g[None, :]))
    calls = []

    class Recorder(np.ndarray):
        def __matmul__(self, other):
            calls.append(np.asarray(other).shape)
            return np.asarray(self) @ np.asarray(other)

    matvec_floor(np.exp(log_k).view(Recorder), np.ones(5), np.ones(4), 3)
    assert calls == [(4,), (5,)] * 3
    calls.clear()
    read_floor(np.exp(log_k).view(Recorder), np.ones(4), 3)
    assert calls == [(4,)] * 3


def test_solver_check_rejects_a_short_run() -> None:
    params = {"backend": "numpy", "dtype": "float64", "n": 16, "eps": 0.1, "method": "otcl-kernel"}
    method = solver_method("otcl-kernel", params)
    assert method.check(method.run(7), 7)["rounds"] == 7
    with pytest.raises(RuntimeError, match="expected 9"):
        method.check(method.run(7), 9)


def test_measure_respects_repeat_and_budget() -> None:
    calls = []
    out = measure(lambda: calls.append(1), repeat=4, budget_s=60.0)
    assert out["runs"] == 4 and len(calls) == 5  # one warm-up call
    out = measure(lambda: time.sleep(0.02), repeat=10, budget_s=0.03)
    assert out["runs"] == 2 and out["median_s"] >= 0.02


def test_unknown_kind_and_failing_case_are_errors_not_results() -> None:
    assert run_case("nope", {})["status"] == "error"
    bad = run_case(
        "solver",
        {
            "backend": "numpy",
            "dtype": "float64",
            "n": 8,
            "eps": 0.1,
            "iters": 5,
            "method": "no-such-method",
            "repeat": 1,
            "budget_s": 1,
        },
    )
    assert bad["status"] == "error" and "no-such-method" in bad["reason"]


def test_selection_pulls_in_baselines_and_ratios_divide_primary_metrics() -> None:
    plan = build_plan(quick=True)
    chosen = select(plan, [r"pot-sinkhorn_log$"])
    ids = {c.id for c in chosen}
    for case in chosen:
        assert set(case.baselines.values()) <= ids
    assert any(i.endswith("/otcl-log") for i in ids) and any(i.endswith("/exp1") for i in ids)
    records = [
        {
            "id": "a",
            "suite": "losses",
            "status": "ok",
            "metrics": {"ms": 6.0},
            "baselines": {"b": "b", "gone": "c"},
        },
        {"id": "b", "suite": "losses", "status": "ok", "metrics": {"ms": 2.0}, "baselines": {}},
        {"id": "c", "suite": "losses", "status": "skipped", "baselines": {}},
    ]
    add_ratios(records)
    assert records[0]["ratios"] == {"b": 3.0, "gone": None}


def test_quick_run_writes_consistent_results(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--out",
        str(tmp_path),
        "--repeat",
        "2",
        "--budget",
        "0.2",
        "--only",
        r"^solver/eps=0\.1/balanced/numpy/float64/.*/otcl-kernel$",
        "--only",
        r"^losses/cross/B=\d+/ntxent$",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "results.json").read_text())
    by_id = {r["id"]: r for r in run["cases"]}
    assert len(by_id) == 4  # the two selected rows and the kernel row's two floors
    assert all(r["status"] == "ok" for r in by_id.values())
    row = next(r for i, r in by_id.items() if i.endswith("otcl-kernel"))
    assert row["info"]["rounds"] == 100 and row["info"]["runs"] >= 1
    for label in ("floor", "read"):
        floor = by_id[row["baselines"][label]]
        assert row["ratios"][label] == pytest.approx(
            row["metrics"]["ms_per_iter"] / floor["metrics"]["ms_per_iter"]
        )
    assert run["settings"]["threads"] == 1 and run["machine"]["versions"]["numpy"]
    text = (tmp_path / "results.md").read_text()
    assert "| numpy | float64 | 48 | otcl-kernel |" in text and "nt-xent" in text


def test_quick_run_rewrites_the_readme_block_and_report_only_reproduces_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nstale\n{README_END}\noutro\n")
    out = tmp_path / "results"
    base = [sys.executable, "-m", "benchmarks", "--out", str(out), "--readme", str(readme)]
    run_args = ["--quick", "--repeat", "1", "--budget", "0.1", "--processes", "2"]
    run_args += ["--only", r"^scale/.*/ntxent$"]
    proc = subprocess.run(
        base + run_args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    summary = (out / "summary.md").read_text()
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert summary in text and "| target | row | measured | goal | met |" in summary
    record = json.loads((out / "results.json").read_text())["cases"][0]
    assert record["info"]["processes"] == 2 and len(record["info"]["per_process"]) == 2
    readme.write_text(replace_block(text, "edited by hand"))
    proc = subprocess.run(
        [*base, "--report-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert summary in readme.read_text()
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", "x")


def _ok(cid: str, suite: str, metrics: dict, baselines: dict | None = None, **extra) -> dict:
    return {
        "id": cid,
        "suite": suite,
        "status": "ok",
        "metrics": metrics,
        "baselines": baselines or {},
        **extra,
    }


def test_targets_read_ratios_of_the_named_rows_and_flag_misses() -> None:
    pre = "solver/eps=0.1/balanced/numpy/float32/n=4096"
    records = [
        _ok(f"{pre}/floor", "solver", {"ms_per_iter": 4.0}),
        _ok(f"{pre}/otcl-kernel", "solver", {"ms_per_iter": 4.4}, {"floor": f"{pre}/floor"}),
        _ok(
            f"{pre}/pot-sinkhorn", "solver", {"ms_per_iter": 5.5}, {"otcl": f"{pre}/otcl-kernel"}
        ),  # POT / otcl = 1.25 < 1.5: missed
        _ok(
            "scale/all-views/2N=16384/gca-ince/otcl",
            "scale",
            {"peak_mib": 4096.0},
            params={"batch": 8192, "family": "gca-ince", "impl": "otcl"},
        ),
    ]
    add_ratios(records)
    checks = evaluate(records)
    by_key = {(c.target.split(":")[-1].strip(), c.row): c for c in checks}
    floor = by_key[("per round within 1.25x of two mat-vecs", "numpy balanced")]
    assert floor.met is True and floor.measured == "1.1"
    pot = by_key[("at least 1.5x faster than POT", "numpy balanced")]
    assert pot.met is False and pot.measured == "1.25"
    assert by_key[("at least 1.5x faster than POT", "torch balanced")].met is None
    scale = [c for c in checks if c.target.startswith("6.")]
    assert scale[0].met is True and scale[0].measured == "4 GiB"
    # peak 4 GiB at 2N = 16384 grows as n^2: 24 GiB holds 16384 * sqrt(6) rows
    assert largest_batch(4 * 2**30, 16384, 24 * 2**30) == int(16384 * 6**0.5)
    assert f"about {int(16384 * 6**0.5):,}" in scale[1].measured
    assert all(c.met is None for c in checks if c.target.startswith("7."))


def test_keep_freed_and_unbalanced_targets_name_their_floors() -> None:
    keep = "losses/cross/B=2048/keep-freed"
    pre = "solver/eps=0.1/unbalanced/numpy/float32/n=1024"
    records = [
        _ok(f"{keep}/ntxent", "losses", {"ms": 50.0}),
        _ok(f"{keep}/ntxent-plus-passes", "losses", {"ms": 80.0}, {"ntxent": f"{keep}/ntxent"}),
        _ok(f"{keep}/gca-ince/otcl", "losses", {"ms": 90.0},
            {"ntxent": f"{keep}/ntxent", "plus-passes": f"{keep}/ntxent-plus-passes"}),
        _ok(f"{pre}/floor", "solver", {"ms_per_iter": 0.15}),
        _ok(f"{pre}/otcl-kernel", "solver", {"ms_per_iter": 0.18}, {"floor": f"{pre}/floor"}),
        _ok(f"{pre}/pot-unbalanced", "solver", {"ms_per_iter": 0.21},
            {"floor": f"{pre}/floor", "otcl": f"{pre}/otcl-kernel"}),
    ]
    add_ratios(records)
    checks = {(c.target[:10], c.row): c for c in evaluate(records)}
    ince = checks[("issue 17.5", "GCA-INCE (NT-Xent plus the exact derivative's passes: 1.6)")]
    assert ince.measured == "1.8" and ince.met is False
    pot = checks[("issue 17.3", "numpy n = 1024 (POT / two bare mat-vecs: 1.4)")]
    assert pot.measured == "1.17" and pot.met is False


def test_paired_solver_times_both_paths_interleaved_in_one_process() -> None:
    from benchmarks.cases import paired_solver

    params = {"dtype": "float32", "n": 24, "iters": 7, "eps": 0.1, "rho": None,
              "method": "otcl-kernel", "repeat": 3, "budget_s": 60.0}
    out = paired_solver(params)
    m, info = out["metrics"], out["info"]
    assert info["pairs"] == 3 and len(info["numpy_call_ms"]) == len(info["torch_call_ms"]) == 3
    assert info["numpy"]["rounds"] == info["torch"]["rounds"] == 7
    assert m["torch_over_numpy"] == pytest.approx(m["ms_per_iter"] / m["numpy_ms_per_iter"])
    median_torch = sorted(info["torch_call_ms"])[1] / 7
    assert m["ms_per_iter"] == pytest.approx(median_torch)


def test_paired_pot_times_the_floor_otcl_and_pot_interleaved_and_target_17_3_reads_it() -> None:
    pytest.importorskip("ot")
    from benchmarks.cases import paired_pot

    params = {"backend": "numpy", "dtype": "float32", "n": 24, "iters": 7, "eps": 0.1,
              "rho": 1.0, "repeat": 3, "budget_s": 60.0}
    out = paired_pot(params)
    m, info = out["metrics"], out["info"]
    assert info["rounds_of_calls"] == 3
    assert info["otcl"]["rounds"] == info["pot"]["rounds"] == 7
    assert info["pot"]["plan_diff_vs_otcl"] <= 1e-4
    median = {label: sorted(info[f"{label}_call_ms"])[1] / 7 for label in ("floor", "otcl", "pot")}
    assert m["ms_per_iter"] == pytest.approx(median["otcl"])
    assert m["pot_ms_per_iter"] == pytest.approx(median["pot"])
    assert m["pot_over_otcl"] == pytest.approx(median["pot"] / median["otcl"])
    assert m["pot_over_floor"] == pytest.approx(median["pot"] / median["floor"])
    # the target reads the paired row where a run has one, the separate rows elsewhere
    pair = "pot-paired/eps=0.1/unbalanced/{}/float32/n={}/floor-otcl-pot"
    pre = "solver/eps=0.1/unbalanced/numpy/float32/n=1024"
    records = [
        {"id": pair.format("numpy", 2048), "suite": "pot-paired", "status": "ok",
         "metrics": {"pot_over_otcl": 1.6, "pot_over_floor": 1.75}, "baselines": {}},
        {"id": pair.format("torch", 2048), "suite": "pot-paired", "status": "ok",
         "metrics": {"pot_over_otcl": 1.4, "pot_over_floor": 1.2}, "baselines": {}},
        _ok(f"{pre}/floor", "solver", {"ms_per_iter": 0.15}),
        _ok(f"{pre}/otcl-kernel", "solver", {"ms_per_iter": 0.18}, {"floor": f"{pre}/floor"}),
        _ok(f"{pre}/pot-unbalanced", "solver", {"ms_per_iter": 0.3},
            {"floor": f"{pre}/floor", "otcl": f"{pre}/otcl-kernel"}),
    ]
    add_ratios(records)
    read = {c.row: c for c in evaluate(records) if c.target.startswith("issue 17.3")}
    assert read["numpy n = 2048 (POT / two bare mat-vecs: 1.75)"].met is True
    assert read["torch n = 2048"].met is False and read["torch n = 2048"].measured == "1.4"
    assert read["numpy n = 1024 (POT / two bare mat-vecs: 2)"].measured == "1.67"
    assert read["numpy n = 4096"].met is None


def test_paired_loss_times_every_loss_interleaved_and_reads_ratios_from_medians() -> None:
    from benchmarks.cases import PAIRED_LOSSES, paired_loss

    params = {"layout": "cross", "batch": 16, "d": 8, "eps": 0.5, "n_iter": 3, "rho": 0.2,
              "repeat": 3, "budget_s": 60.0}
    out = paired_loss(params)
    m, info = out["metrics"], out["info"]
    assert info["rounds"] == 3
    assert set(info["call_ms"]) == {label for label, _ in PAIRED_LOSSES}
    # NT-Xent plus passes returns NT-Xent's value; GCA-INCE's value is its own (not NT-Xent's)
    assert info["values"]["ntxent-plus-passes"] == info["values"]["ntxent"]
    assert info["values"]["gca-ince"] != info["values"]["ntxent"]
    for label, calls in info["call_ms"].items():
        assert m[f"{label}_ms"] == pytest.approx(sorted(calls)[1])
    assert m["gca-ince_over_ntxent"] == pytest.approx(m["gca-ince_ms"] / m["ntxent_ms"])
    assert m["ms"] == m["gca-ince_ms"]
    pre = "losses/cross/B=2048/keep-freed"
    checks = evaluate([{"id": f"{pre}/paired", "suite": "losses-paired", "status": "ok",
                        "metrics": {**m, "gca-ince_over_ntxent": 1.3,
                                    "gca-uot_over_ntxent": 1.6,
                                    "ntxent-plus-passes_over_ntxent": 1.25},
                        "baselines": {}}])
    read = {c.row: c for c in checks if "in one process" in c.target}
    note = " (NT-Xent plus the exact derivative's passes: 1.25)"
    assert read["GCA-INCE" + note].met is True and read["GCA-UOT" + note].met is False


def test_merged_reports_drop_rows_of_retired_cases() -> None:
    from benchmarks.runner import drop_retired

    run = {"command": "x", "cases": [{"id": "a"}, {"id": "old"}, {"id": "b"}]}
    kept = drop_retired(run, {"a", "b", "c"})
    assert [c["id"] for c in kept["cases"]] == ["a", "b"] and kept["command"] == "x"
    assert len(run["cases"]) == 3  # the input is untouched


def test_processes_run_in_rounds_and_stop_on_failure_or_budget() -> None:
    import argparse

    from benchmarks.runner import interleaved
    from benchmarks.suites import Case

    cases = [Case(name, "solver", "solver", {}) for name in "ABCD"]
    skipped = {"status": "skipped", "reason": "not available"}
    records: list = [None, skipped, None, None]
    runs: list[list[dict]] = [[] for _ in cases]
    args = argparse.Namespace(processes=3, process_budget=10.0)
    order = []
    for k, case, process in interleaved(cases, records, runs, args):
        order.append(f"{case.id}{process + 1}")
        # C fails in its second process; D's first process uses up its budget
        failed = case.id == "C" and process == 1
        runs[k].append(
            {"status": "error" if failed else "ok", "wall_s": 12.0 if case.id == "D" else 1.0}
        )
    assert order == ["A1", "C1", "D1", "A2", "C2", "A3"]
    assert runs[1] == []  # the skipped case ran no process


def test_median_process_keeps_one_process_metrics_and_fails_on_any_error() -> None:
    def rec(ms: float, value: float) -> dict:
        return {"status": "ok", "metrics": {"ms": ms, "value": value}, "info": {}, "wall_s": 1.0}

    runs = [rec(5.0, 1.0), rec(3.0, 2.0), rec(4.0, 3.0)]
    chosen = median_process(runs, "ms")
    assert chosen["metrics"] == {"ms": 4.0, "value": 3.0}  # the median process, whole
    assert chosen["info"]["processes"] == 3 and chosen["info"]["per_process"] == [5.0, 3.0, 4.0]
    assert chosen["wall_s"] == 3.0 and runs[2]["info"] == {}  # inputs untouched
    assert median_process(runs[:2], "ms")["metrics"]["ms"] == 3.0  # lower middle of two
    bad = {"status": "error", "reason": "boom"}
    assert median_process([runs[0], bad], "ms") is bad


def test_loss_case_inputs_have_the_size_their_ids_name() -> None:
    # an id's ``B=`` is the rows of each of z1, z2 (cross-view), ``2N=`` the rows of z (all-views)
    import re

    from benchmarks.cases import _loss_inputs

    for case in build_plan(quick=True):
        if case.kind not in ("loss", "memory"):
            continue
        inputs = _loss_inputs(case.params, int(case.params["batch"]))
        size = re.search(r"/(B|2N)=(\d+)/", case.id)
        assert size is not None, case.id
        expected = [int(size[2])] * (1 if size[1] == "2N" else 2)
        assert [z.shape[0] for z in inputs] == expected, case.id


def test_late_over_early_ignores_the_first_call_and_single_outliers() -> None:
    from benchmarks.common import late_over_early

    calls = [500.0, 10, 11, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 9, 11, 30]
    assert late_over_early(calls) == pytest.approx(1.0)  # a slow last call is an outlier
    drifting = [500.0] + [10.0] * 10 + [15.0] * 9
    assert late_over_early(drifting) == pytest.approx(1.5)


def test_loss_floor_profile_runs_and_reports_its_parts(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.loss_floor import main as loss_floor

    assert loss_floor(["--batch", "32", "--dim", "4", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    for part in ("NT-Xent fwd+bwd", "GCAInfoNCE fwd+bwd", "8 kernel mat-vec passes", "floor"):
        assert part in out


def test_swav_reference_loops_equal_otcl_codes_and_find_the_fewest_rounds() -> None:
    import otcl
    from benchmarks.common import swav_scores

    scores = swav_scores(40, 12, d=16)
    for n_iter in (1, 3, 6):
        expected = otcl.swav_codes(scores, eps=0.05, n_iter=n_iter)
        np.testing.assert_allclose(ref.swav_codes_numpy(scores, 0.05, n_iter), expected,
                                   rtol=1e-10, atol=1e-13)
        got = ref.swav_codes_torch(torch.from_numpy(scores), 0.05, n_iter)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-13)
    errors = ref.swav_prototype_errors(scores, 0.05)
    first = [next(errors) for _ in range(200)]
    assert first[0] > 1e-2 and first[-1] < 1e-8  # the error falls, from well above the tol
    tol = 1e-4
    rounds = ref.swav_rounds_to(scores, 0.05, tol)
    assert first[rounds - 1] <= tol < first[rounds - 2]
    # otcl stopping on the same error stops after the same count
    _, res = otcl.swav_codes(scores, eps=0.05, tol=tol, return_details=True)
    assert res.n_iter == rounds and res.error <= tol
    with pytest.raises(ValueError, match="does not reach"):
        ref.swav_rounds_to(scores, 0.05, 1e-30, max_rounds=5)


def test_swav_targets_compare_otcl_with_the_reference_rows() -> None:
    group = "swav/B=4096/K=3000/numpy/float32"
    records = [
        _ok(f"{group}/rounds=3/reference", "swav", {"ms": 100.0}),
        _ok(f"{group}/rounds=3/otcl", "swav", {"ms": 80.0},
            {"reference": f"{group}/rounds=3/reference"}),
        _ok(f"{group}/tol=0.0001/reference", "swav", {"ms": 100.0}),
        _ok(f"{group}/tol=0.0001/otcl", "swav", {"ms": 120.0},
            {"reference": f"{group}/tol=0.0001/reference"}),
    ]
    add_ratios(records)
    checks = [c for c in evaluate(records) if "SwAV" in c.target]
    by_row = {(c.target.split(":")[0].split(",")[0], c.row, c.goal): c for c in checks}
    fixed = next(c for c in checks if "3 rounds" in c.target and c.row == "numpy")
    assert fixed.met is True and fixed.measured == "0.8"
    tol = next(c for c in checks if "marginal error" in c.target and c.row == "numpy")
    assert tol.met is False and tol.measured == "1.2"
    assert all(c.met is None for c in checks if c.row == "torch") and len(by_row) == 4


def test_external_rows_run_pinned_and_check_plans_against_otcl(tmp_path: Path) -> None:
    pytest.importorskip("ott")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path), "--repeat", "1",
           "--budget", "0.1", "--only", r"^external/eps=0\.1/unbalanced/.*/numpy/otcl-log$"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    by_id = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())["cases"]}
    ott = next(r for i, r in by_id.items() if i.endswith("/jax/ott-lse"))
    otcl_row = next(r for i, r in by_id.items() if i.endswith("/numpy/otcl-log"))
    assert ott["status"] == "ok" and otcl_row["status"] == "ok"
    assert ott["info"]["plan_diff_vs_otcl"] <= 1e-4 and ott["info"]["rounds"] == 100
    assert len(ott["info"]["pinned_cores"]) == 1 == len(otcl_row["info"]["pinned_cores"])
    assert otcl_row["ratios"]["ott"] == pytest.approx(
        otcl_row["metrics"]["ms_per_iter"] / ott["metrics"]["ms_per_iter"]
    )


def test_keep_freed_loss_rows_carry_the_allocator_environment() -> None:
    from benchmarks.suites import KEEP_FREED_ENV

    keep = [c for c in build_plan(quick=True) if "/keep-freed/" in c.id]
    assert keep and all(c.env == KEEP_FREED_ENV and c.params["malloc"] for c in keep)
    assert all(not c.env for c in build_plan(quick=True)
               if c.suite == "losses" and "/keep-freed/" not in c.id)
    for case in keep:
        if case.params.get("impl") == "otcl":
            assert "/keep-freed/" in case.baselines["ntxent"]  # ratios within one setting


def test_threads_rows_run_without_thread_variables_or_blas_limit(tmp_path: Path) -> None:
    from benchmarks.common import THREAD_ENV_VARS

    case = next(c for c in build_plan(quick=True) if c.id.endswith("/gca-ince/otcl")
                and c.suite == "threads")
    assert case.env == {var: "" for var in THREAD_ENV_VARS} and case.params["pools"]
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path), "--repeat", "2",
           "--budget", "0.5", "--only", r"^threads/.*/gca-ince/otcl$"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    by_id = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())["cases"]}
    row = by_id[case.id]
    assert row["status"] == "ok" and row["info"]["torch_threads"] == 1
    assert row["metrics"]["cpu_over_wall"] > 0 and row["info"]["calls"] >= 1
    blas = [p for p in row["info"]["threadpools"] if p["internal_api"] == "openblas"]
    # the process's own BLAS pool is left at its default size (the case measures otcl's limit)
    assert all(p["num_threads"] == len(os.sched_getaffinity(0)) for p in blas)


def test_merged_runs_replace_rows_keep_the_rest_and_take_ratios_within_one_run() -> None:
    from benchmarks.runner import merge_runs
    from benchmarks.targets import remeasure, runs_lines, summary_markdown

    def run(git: str, rows: list[tuple[str, float, dict]]) -> dict:
        cases = [_ok(cid, "losses", {"ms": ms}, base) for cid, ms, base in rows]
        return {"command": f"python -m benchmarks ({git})", "started": "2026-12-03T07:00:00",
                "git": git, "settings": {"threads": 1}, "machine": {}, "cases": cases}

    old = run("aaa", [("a", 4.0, {"b": "b"}), ("b", 2.0, {}), ("c", 8.0, {"b": "b"})])
    new = run("bbb", [("c", 3.0, {"b": "b"}), ("d", 1.0, {})])
    merged = merge_runs(old, new)
    by_id = {c["id"]: c for c in merged["cases"]}
    assert [c["id"] for c in merged["cases"]] == ["a", "b", "c", "d"]
    assert by_id["c"]["metrics"]["ms"] == 3.0 and by_id["c"]["run"] == 1 and by_id["a"]["run"] == 0
    add_ratios(merged["cases"])
    assert by_id["a"]["ratios"] == {"b": 2.0}  # both from run 1
    assert by_id["c"]["ratios"] == {"b": None}  # its baseline is from the other run
    lines = runs_lines(merged)
    assert "run 1" in lines[1] and "aaa" in lines[1] and "2 rows" in lines[1]
    assert "run 2" in lines[2] and "bbb" in lines[2] and "`c`" in lines[2]
    assert "git bbb" in summary_markdown(merged)
    assert remeasure("6. 2N = 16384 float32 fwd+bwd: peak memory").endswith("'^scale/'")


def test_the_limit_the_threads_rows_measure_holds_numpys_pool_to_torchs_count(
        numpy_blas_threads) -> None:
    """NumPy's BLAS pool runs on torch's thread count inside the limit, also when another BLAS
    library (SciPy's own) was loaded after the first limit was taken."""
    import scipy.linalg  # noqa: F401 (loads SciPy's BLAS library, which is not NumPy's)
    import threadpoolctl

    from otcl.backend import torch_blas_limit

    before_torch = torch.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        outside = numpy_blas_threads()
        try:
            torch.set_num_threads(1)
            with torch_blas_limit():
                inside = numpy_blas_threads()
            after = numpy_blas_threads()
        finally:
            torch.set_num_threads(before_torch)
    assert outside and all(n == 2 for n in outside)
    assert inside and all(n == 1 for n in inside)
    assert after == outside  # restored on exit
