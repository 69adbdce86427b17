"""Distributed losses (``distributed=True``) against the single-process loss on the
concatenated batch, with the gloo backend on the CPU.

Every multi-process check runs inside one spawned job per world size (spawning is the slow
part): the workers compute the distributed values and gradients and save them; the test process
computes the single-process reference on the global batch (the per-rank blocks concatenated in
rank order, built here independently of the library's re-assembly) and compares, in float64, to
1e-10. Each job is bounded in time (the workers' collectives time out, the join has a deadline
after which the workers are killed) and always destroys its process group.
"""

from __future__ import annotations

import math
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover - torch built without distributed support
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

import otcl.torch as ot  # noqa: E402
from otcl.torch.distributed import gather_with_grad, sharded_log_sinkhorn  # noqa: E402

DT = torch.float64
TOL = 1e-10
JOB_TIMEOUT_S = 150.0
SIZES = {2: [3, 4], 3: [2, 3, 2]}  # unequal per-rank batch sizes
D = 5


# ---------------------------------------------------------------------------------------------
# the cases: data per rank, the global batch, the loss


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=DT)


def _make_cases(world: int) -> list[dict[str, Any]]:
    """Per-rank inputs and the matching global (single-process) inputs of each case."""
    sizes = SIZES[world]
    n = sum(sizes)
    g = torch.Generator().manual_seed(1234 + world)
    cases = []

    def cross(name: str, loss: str, kw: dict[str, Any], **extra: Any) -> dict[str, Any]:
        z1 = [_rand(g, s, D) for s in sizes]
        z2 = [z + 0.3 * _rand(g, *z.shape) for z in z1]
        return dict(name=name, loss=loss, kw=dict(kw, layout="cross"), form="cross", z1=z1,
                    z2=z2, **extra)

    def two(name: str, loss: str, kw: dict[str, Any], **extra: Any) -> dict[str, Any]:
        # the SimCLR call loss(z1, z2): the all-views problem of the global [Z1; Z2]
        z1 = [_rand(g, s, D) for s in sizes]
        z2 = [z + 0.3 * _rand(g, *z.shape) for z in z1]
        return dict(name=name, loss=loss, kw=kw, form="two", z1=z1, z2=z2, **extra)

    cases.append(two("two_info_nce", "InfoNCE", {}))
    cases.append(two("two_gca_uot", "GCAUOT", {"n_iter": 5}))
    cases.append(two("two_gca_ince_labels", "GCAInfoNCE", {"n_iter": 3},
                     labels=[torch.arange(s) % 2 for s in sizes]))
    two_none = two("two_gca_ince_none", "GCAInfoNCE", {"n_iter": 4, "reduction": "none"})
    two_none["weights"] = [torch.rand(2 * s, generator=g, dtype=DT) for s in sizes]
    cases.append(two_none)

    cases.append(cross("info_nce", "InfoNCE", {}))
    cases.append(cross("gca_ince", "GCAInfoNCE", {"n_iter": 5}))
    cases.append(cross("gca_ince_implicit", "GCAInfoNCE", {"n_iter": 30, "grad": "implicit"}))
    cases.append(cross("gca_uot", "GCAUOT", {"n_iter": 5}))
    cases.append(cross("gca_uot_sum", "GCAUOT", {"n_iter": 4, "reduction": "sum",
                                                 "metric": "cosine"}))
    cases.append(cross("gca_rince", "GCARINCE", {"n_iter": 3}))
    cases.append(cross("iot", "IOT", {"n_iter": 3}))
    cases.append(cross("alignment_ce_detach", "AlignmentLoss",
                       {"n_iter": 3, "rho_b": 1.0, "divergence": "cross_entropy",
                        "grad": "detach"}))
    # per-sample labels with repeats across ranks
    lab = [torch.arange(s) % 2 for s in sizes]
    cases.append(cross("gca_ince_labels", "GCAInfoNCE", {"n_iter": 3}, labels=lab))
    # a global target, the same tensor on every rank
    T = torch.eye(n, dtype=DT) + 0.05 * torch.rand(n, n, generator=g, dtype=DT)
    cases.append(cross("gca_ince_target", "GCAInfoNCE", {"n_iter": 3}, target=T))

    def allviews(name: str, loss: str, kw: dict[str, Any], layout: str, views: int = 2,
                 **extra: Any) -> dict[str, Any]:
        # rank r holds views[v][r] (N_r, d) of its N_r samples
        base = [_rand(g, s, D) for s in sizes]
        per_view = [[b + 0.3 * _rand(g, *b.shape) for b in base] for _ in range(views)]
        if layout == "blocked":
            local = [torch.cat([per_view[v][r] for v in range(views)]) for r in range(world)]
        else:
            local = [torch.stack([per_view[v][r] for v in range(views)], 1).reshape(-1, D)
                     for r in range(world)]
        return dict(name=name, loss=loss, kw=dict(kw, layout=layout, n_views=views),
                    form="all", z=local, views=per_view, **extra)

    cases.append(allviews("blocked_gca_ince", "GCAInfoNCE", {"n_iter": 5}, "blocked"))
    cases.append(allviews("blocked3_gca_uot", "GCAUOT", {"n_iter": 4}, "blocked", views=3))
    cases.append(allviews("interleaved_info_nce", "InfoNCE", {}, "interleaved"))
    # per-row labels in the blocked layout: they must follow the rows' re-assembly
    rows_lab = [torch.tensor([(7 * i + r) % 3 for i in range(2 * s)]) for r, s in
                enumerate(sizes)]
    cases.append(allviews("blocked_labels_rows", "GCAInfoNCE", {"n_iter": 3}, "blocked",
                          labels=rows_lab))
    # reduction "none": rank r back-propagates sum_i c_i rows_i with its own weights c
    case = allviews("blocked_none", "GCAInfoNCE", {"n_iter": 4, "reduction": "none"}, "blocked")
    case["weights"] = [torch.rand(2 * s, generator=g, dtype=DT) for s in sizes]
    cases.append(case)
    return cases


def _global_inputs(case: dict[str, Any], world: int) -> dict[str, Any]:
    """The concatenated batch in the global layout (built directly from the per-view parts)."""
    if case["form"] in ("cross", "two"):
        return {"z1": torch.cat(case["z1"]), "z2": torch.cat(case["z2"])}
    per_view = case["views"]
    if case["kw"]["layout"] == "blocked":
        return {"z": torch.cat([torch.cat(v) for v in per_view])}
    return {"z": torch.cat(case["z"])}


def _global_rows(case: dict[str, Any], world: int, rank: int) -> torch.Tensor:
    """Global row of each local row of ``rank`` (cross: rows of z1; all-views: rows of z)."""
    sizes = SIZES[world]
    n, off = sum(sizes), sum(sizes[:rank])
    s = sizes[rank]
    if case["form"] == "cross":
        return torch.arange(s) + off
    if case["form"] == "two":  # local rows [z1; z2] -> global rows of [Z1; Z2]
        return torch.cat([torch.arange(s) + off, torch.arange(s) + n + off])
    v = case["kw"]["n_views"]
    if case["kw"]["layout"] == "blocked":
        return torch.cat([torch.arange(s) + k * n + off for k in range(v)])
    return torch.arange(v * s) + v * off


def _labels_global(case: dict[str, Any], world: int) -> torch.Tensor | None:
    lab = case.get("labels")
    if lab is None:
        return None
    if case["form"] in ("cross", "two"):
        return torch.cat(lab)
    n = sum(SIZES[world])
    out = torch.empty(2 * n, dtype=lab[0].dtype)
    for r in range(world):
        out[_global_rows(case, world, r)] = lab[r]
    return out


def _loss(case: dict[str, Any], distributed: bool) -> nn.Module:
    kw = dict(case["kw"])
    return getattr(ot, case["loss"])(distributed=distributed, **kw)


# ---------------------------------------------------------------------------------------------
# worker side


def _distributed_case(case: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    loss = _loss(case, distributed=True)
    call: dict[str, Any] = {}
    if case.get("labels") is not None:
        call["labels"] = case["labels"][rank]
    if case.get("target") is not None:
        call["target"] = case["target"]
    if case["form"] in ("cross", "two"):
        z1 = case["z1"][rank].clone().requires_grad_(True)
        z2 = case["z2"][rank].clone().requires_grad_(True)
        value, details = loss(z1, z2, return_details=True, **call)
        leaves = {"z1": z1, "z2": z2}
    else:
        z = case["z"][rank].clone().requires_grad_(True)
        value, details = loss(z, return_details=True, **call)
        leaves = {"z": z}
    weights = case.get("weights")
    out = value if weights is None else (value * weights[rank]).sum()
    out.backward()
    return {
        "value": value.detach(),
        "grads": {k: v.grad.clone() for k, v in leaves.items()},
        "per_sample": details.per_sample.detach(),
        "f": details.f.detach(),
        "g": details.g.detach(),
    }


def _gather_checks(rank: int, world: int) -> dict[str, Any]:
    sizes = SIZES[world]
    g = torch.Generator().manual_seed(99)
    blocks = [torch.randn(s, 3, generator=g, dtype=DT) for s in sizes]
    weights = [torch.randn(sum(sizes), 3, generator=g, dtype=DT) for _ in sizes]
    x = blocks[rank].clone().requires_grad_(True)
    y = gather_with_grad(x)
    (y * weights[rank]).sum().backward()
    return {"gathered": y.detach(), "grad": x.grad.clone(), "blocks": blocks, "weights": weights}


def _error_checks(rank: int, world: int) -> dict[str, str]:
    """Calls that every rank must reject together (a hang here is a failure by timeout)."""
    sizes = SIZES[world]
    s = sizes[rank]
    z1, z2 = torch.randn(s, D, dtype=DT), torch.randn(s, D, dtype=DT)
    msgs: dict[str, str] = {}

    def expect(key: str, fn: Any) -> None:
        try:
            fn()
        except ValueError as e:
            msgs[key] = str(e)
        else:
            msgs[key] = "<no error>"

    # a per-rank target is not the global target (same shape on every rank, or not)
    expect("local_target", lambda: ot.GCAInfoNCE(layout="cross", distributed=True)(
        z1[:2], z2[:2], target=torch.eye(2, dtype=DT)))
    expect("local_target_sizes", lambda: ot.GCAInfoNCE(layout="cross", distributed=True)(
        z1, z2, target=torch.eye(s, dtype=DT)))
    # the ranks disagree on a hyper-parameter
    expect("hyper", lambda: ot.GCAInfoNCE(n_iter=3 + rank, distributed=True)(z1, z2))
    # one rank's input is malformed (an odd number of rows for two blocked views)
    rows = 2 * s + (1 if rank == world - 1 else 0)
    expect("bad_rank", lambda: ot.InfoNCE(layout="blocked", distributed=True)(
        torch.randn(rows, D, dtype=DT)))
    # labels of a wrong length on one rank
    lab = torch.zeros(s + (1 if rank == 0 else 0), dtype=torch.int64)
    expect("labels", lambda: ot.InfoNCE(distributed=True)(z1, z2, labels=lab))
    # the last rank's global target has two rows swapped: equal row sums, equal sums of the
    # index-weighted entries, yet a different target (each rank would compute another loss)
    # (the cross-view problem, whose N x N target may hold the positive pairs anywhere)
    n = sum(sizes)
    order = list(range(n))
    if rank == world - 1:
        order[0], order[1] = 1, 0
    T = (torch.eye(n, dtype=DT) + 0.05)[order]
    expect("swapped_target", lambda: ot.GCAInfoNCE(layout="cross", distributed=True)(
        z1, z2, target=T))
    # a bad reduction on rank 0 only (a functional form: no constructor to reject it first)
    red = "bogus" if rank == 0 else "mean"
    expect("reduction", lambda: ot.info_nce(z1, z2, distributed=True, reduction=red))
    # the group still works after the rejected calls
    msgs["after"] = str(float(ot.InfoNCE(distributed=True)(z1, z2)))
    return msgs


def _warning_checks(rank: int, world: int) -> dict[str, Any]:
    s = SIZES[world][rank]
    z1, z2 = torch.randn(s, D, dtype=DT), torch.randn(s, D, dtype=DT)
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        module = ot.GCAInfoNCE(n_iter=2)
        module(z1, z2)
        module(z1, z2)
        ot.GCAInfoNCE(n_iter=2)(z1, z2)  # a new module warns again
    out["module"] = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ot.info_nce(z1, z2)
    out["functional"] = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m = ot.GCAInfoNCE(n_iter=2, distributed=True)
        m(z1, z2)
        ot.info_nce(z1, z2, distributed=True)
    out["distributed"] = [str(w.message) for w in rec]
    return out


class _Net(nn.Module):
    """Encoder plus loss (learnable temperature) in one module, as DDP wraps it."""

    def __init__(self, layout: str | None, distributed: bool) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).to(DT)
        eps = nn.Parameter(torch.tensor(0.4, dtype=DT))
        if layout is None:
            self.loss = ot.GCAUOT(eps=eps, n_iter=4, distributed=distributed)
        else:
            self.loss = ot.GCAInfoNCE(eps=eps, n_iter=4, layout=layout, distributed=distributed)
        self.layout = layout

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.layout is None:
            return self.loss(self.enc(x1), self.enc(x2))
        return self.loss(self.enc(torch.cat([x1, x2])))  # blocked [view 1; view 2] per rank


def _ddp_payload(world: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(7)
    sizes = SIZES[world]
    torch.manual_seed(0)
    states = {lay: _Net(lay, False).state_dict() for lay in (None, "blocked")}
    x1 = [torch.randn(s, 6, generator=g, dtype=DT) for s in sizes]
    x2 = [x + 0.2 * torch.randn(*x.shape, generator=g, dtype=DT) for x in x1]
    return {"states": states, "x1": x1, "x2": x2}


def _sgd_steps(net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for x1, x2 in batches:
        opt.zero_grad()
        net(x1, x2).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _ddp_checks(rank: int, world: int, payload: dict[str, Any]) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    out = {}
    for lay in (None, "blocked"):
        net = _Net(lay, True)
        net.load_state_dict(payload["states"][lay])
        ddp = DistributedDataParallel(net)
        x1, x2 = payload["x1"][rank], payload["x2"][rank]
        state = _sgd_steps(ddp, [(x1, x2), (x2, x1)])
        out[str(lay)] = {k.removeprefix("module."): v for k, v in state.items()}
    return out


def _sharded_payload(world: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(5)
    n, m = 3 * world + 1, 6
    lk = torch.randn(n, m, generator=g, dtype=DT) * 3
    lk[0, 1] = -math.inf  # a masked entry
    la = torch.log(torch.rand(n, generator=g, dtype=DT) + 0.5)
    lb = torch.log(torch.rand(m, generator=g, dtype=DT) + 0.5)
    bounds = [round(r * n / world) for r in range(world + 1)]
    bounds[1] = 1 if world > 1 else bounds[1]  # unequal shards, the first with one row
    return {"lk": lk, "la": la, "lb": lb, "bounds": bounds}


def _sharded_checks(rank: int, world: int, p: dict[str, Any]) -> dict[str, Any]:
    lo, hi = p["bounds"][rank], p["bounds"][rank + 1]
    out = {}
    for ta, tb, it in ((1.0, 1.0, 7), (0.6, 0.8, 5), (1.0, 1.0, 0)):
        phi, gamma = sharded_log_sinkhorn(p["lk"][lo:hi], p["la"][lo:hi], p["lb"], n_iter=it,
                                          t_a=ta, t_b=tb)
        out[(ta, tb, it)] = (phi, gamma)
    return out


def _job(rank: int, world: int, payload: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"cases": {}}
    for case in payload["cases"]:
        res["cases"][case["name"]] = _distributed_case(case, rank, world)
    res["gather"] = _gather_checks(rank, world)
    res["errors"] = _error_checks(rank, world)
    res["warnings"] = _warning_checks(rank, world)
    res["ddp"] = _ddp_checks(rank, world, payload["ddp"])
    res["sharded"] = _sharded_checks(rank, world, payload["sharded"])
    return res


def _entry(rank: int, world: int, rendezvous: str, outdir: str, payload: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        result = _job(rank, world, payload)
        torch.save(result, Path(outdir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(world: int, tmp_path: Path, payload: dict[str, Any]) -> list[dict[str, Any]]:
    ctx = mp.start_processes(_entry, args=(world, str(tmp_path / "rendezvous"), str(tmp_path),
                                           payload),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process job did not finish in {JOB_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


# ---------------------------------------------------------------------------------------------
# the tests


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL, msg=lambda m: f"{what}: {m}")


def _reference_case(case: dict[str, Any], world: int) -> dict[str, Any]:
    """The single-process loss on the concatenated batch, with autograd gradients."""
    loss = _loss(case, distributed=False)
    glob = {k: v.clone().requires_grad_(True) for k, v in _global_inputs(case, world).items()}
    call: dict[str, Any] = {}
    lab = _labels_global(case, world)
    if lab is not None:
        call["labels"] = lab
    if case.get("target") is not None:
        call["target"] = case["target"]
    args = (glob["z1"], glob["z2"]) if case["form"] in ("cross", "two") else (glob["z"],)
    value, details = loss(*args, return_details=True, **call)
    return {"value": value, "details": details, "inputs": glob}


def _check_case(case: dict[str, Any], world: int, results: list[dict[str, Any]]) -> None:
    name = case["name"]
    ref = _reference_case(case, world)
    reduction = case["kw"].get("reduction", "mean")
    value = ref["value"]
    if reduction == "none":
        # rank r back-propagated sum_i c_i rows_i over its own rows: the sum over ranks of
        # those is sum over global rows with the weights placed at the rows' global positions
        c = torch.zeros_like(value)
        for r in range(world):
            c[_global_rows(case, world, r)] = case["weights"][r]
        (value * c).sum().backward()
        scale = 1.0
    else:
        value.backward()
        scale = float(world)  # the gradient DDP divides by the world size
    for r, res in enumerate(results):
        got = res["cases"][name]
        rows = _global_rows(case, world, r)
        if reduction == "none":
            _close(got["value"], value.detach()[rows], f"{name}: rank {r} own rows")
        else:
            _close(got["value"], value.detach(), f"{name}: rank {r} value")
        det = ref["details"]
        _close(got["per_sample"], det.per_sample.detach(), f"{name}: details.per_sample")
        _close(got["f"], det.f.detach(), f"{name}: details.f")
        _close(got["g"], det.g.detach(), f"{name}: details.g")
        if case["form"] == "two":
            own = rows[: rows.shape[0] // 2]
            for key in ("z1", "z2"):
                expected = ref["inputs"][key].grad[own]
                _close(got["grads"][key] / scale, expected, f"{name}: rank {r} d/d{key}")
        elif case["form"] == "cross":
            for key in ("z1", "z2"):
                expected = ref["inputs"][key].grad[rows]
                _close(got["grads"][key] / scale, expected, f"{name}: rank {r} d/d{key}")
        else:
            expected = ref["inputs"]["z"].grad[rows]
            _close(got["grads"]["z"] / scale, expected, f"{name}: rank {r} d/dz")


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    world = request.param
    cases = _make_cases(world)
    payload = {"cases": cases, "ddp": _ddp_payload(world), "sharded": _sharded_payload(world)}
    results = _spawn(world, tmp_path_factory.mktemp(f"dist{world}"), payload)
    return world, payload, results


@pytest.mark.slow
def test_losses_equal_single_process(job: Any) -> None:
    world, payload, results = job
    names = [c["name"] for c in payload["cases"]]
    assert len(names) == len(set(names))
    for case in payload["cases"]:
        _check_case(case, world, results)


@pytest.mark.slow
def test_gather_with_grad(job: Any) -> None:
    _, _, results = job
    blocks, weights = results[0]["gather"]["blocks"], results[0]["gather"]["weights"]
    full = torch.cat(blocks)
    total_w = sum(weights)  # d/dx of sum_r <gathered, W_r>
    start = 0
    for r, res in enumerate(results):
        _close(res["gather"]["gathered"], full, f"gathered on rank {r}")
        s = blocks[r].shape[0]
        _close(res["gather"]["grad"], total_w[start:start + s], f"gather gradient on rank {r}")
        start += s


@pytest.mark.slow
def test_ddp_step_equals_single_process(job: Any) -> None:
    _, payload, results = job
    p = payload["ddp"]
    x1, x2 = torch.cat(p["x1"]), torch.cat(p["x2"])
    for lay in (None, "blocked"):
        net = _Net(lay, False)
        net.load_state_dict(p["states"][lay])
        expected = _sgd_steps(net, [(x1, x2), (x2, x1)])
        moved = max(float((expected[k] - v).abs().max()) for k, v in p["states"][lay].items())
        assert moved > 1e-3  # the steps changed the parameters (a test that can fail)
        for r, res in enumerate(results):
            got = res["ddp"][str(lay)]
            assert set(got) == set(expected)
            for k in expected:
                _close(got[k], expected[k], f"layout {lay}: rank {r} parameter {k}")


@pytest.mark.slow
def test_inconsistent_calls_raise_on_every_rank(job: Any) -> None:
    world, _, results = job
    for r, res in enumerate(results):
        e = res["errors"]
        assert f"global target of shape ({2 * world}, {2 * world})" in e["local_target"]
        assert "target shape" in e["local_target_sizes"]
        assert "hyper-parameters" in e["hyper"]
        if r == world - 1:
            assert "multiple of 2 rows" in e["bad_rank"]
        else:
            assert f"rank(s) [{world - 1}]" in e["bad_rank"]
        if r == 0:
            assert "labels has length" in e["labels"]
            assert "reduction must be" in e["reduction"]
        else:
            assert "rank(s) [0]" in e["labels"]
            assert "rank(s) [0]" in e["reduction"]
        assert "disagree on the target (its values differ)" in e["swapped_target"]
        assert f"rank(s) [{world - 1}]" in e["swapped_target"]
        assert math.isfinite(float(e["after"]))


@pytest.mark.slow
def test_local_negatives_warning(job: Any) -> None:
    world, _, results = job
    for res in results:
        w = res["warnings"]
        assert len(w["module"]) == 2, w["module"]  # once per module instance
        assert all("local negatives" in m and f"world size {world}" in m for m in w["module"])
        assert len(w["functional"]) == 1 and "local negatives" in w["functional"][0]
        assert w["distributed"] == []


def _plain_rounds(lk: torch.Tensor, la: torch.Tensor, lb: torch.Tensor, ta: float, tb: float,
                  n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    gamma = torch.zeros_like(lb)
    for _ in range(n_iter):
        phi = ta * (la - torch.logsumexp(lk + gamma[None, :], 1))
        gamma = tb * (lb - torch.logsumexp(lk + phi[:, None], 0))
    return ta * (la - torch.logsumexp(lk + gamma[None, :], 1)), gamma


@pytest.mark.slow
def test_sharded_sinkhorn(job: Any) -> None:
    _, payload, results = job
    p = payload["sharded"]
    for key in results[0]["sharded"]:
        phi, gamma = _plain_rounds(p["lk"], p["la"], p["lb"], *key)
        for r, res in enumerate(results):
            lo, hi = p["bounds"][r], p["bounds"][r + 1]
            got_phi, got_gamma = res["sharded"][key]
            _close(got_phi, phi[lo:hi], f"sharded phi {key} rank {r}")
            _close(got_gamma, gamma, f"sharded gamma {key} rank {r}")


# ---------------------------------------------------------------------------------------------
# without a process group


def test_distributed_without_process_group_raises() -> None:
    assert not dist.is_initialized()
    z1, z2 = torch.randn(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    with pytest.raises(RuntimeError, match="distributed=True"):
        ot.GCAInfoNCE(distributed=True)(z1, z2)
    with pytest.raises(RuntimeError, match="distributed=True"):
        ot.info_nce(z1, z2, distributed=True)
    with pytest.raises(RuntimeError, match="process group"):
        gather_with_grad(z1)
    with pytest.raises(TypeError, match="distributed"):
        ot.InfoNCE(distributed="yes")
    # distributed=False outside a group: no warning, the ordinary loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(ot.InfoNCE()(z1, z2))
