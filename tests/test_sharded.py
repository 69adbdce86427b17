"""Row-sharded losses (``distributed="sharded"``) against the single-process loss on the
concatenated batch and against the gather mode (``distributed=True``), with gloo on the CPU.

As in ``test_distributed.py``: one spawned job per world size computes, on every rank, the
sharded loss (value, gradients, details of the rank's rows) and the gather mode's, and saves
them; the test process computes the single-process reference on the global batch (the per-rank
blocks concatenated in rank order, built here independently of the library) with autograd and
compares in float64 to 1e-10. Ranks hold unequal numbers of samples. Each job is bounded in time
and always destroys its process group.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover - torch built without distributed support
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

import otcl.torch as ot  # noqa: E402
from otcl.torch.sharded import col_logsumexp  # noqa: E402

DT = torch.float64
TOL = 1e-10
JOB_TIMEOUT_S = 150.0
SIZES = {2: [3, 5], 3: [2, 4, 3]}  # unequal per-rank batch sizes
D = 5


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=DT)


def _make_cases(world: int) -> list[dict[str, Any]]:
    """Per-rank inputs of each case (the global batch is their concatenation)."""
    sizes = SIZES[world]
    n = sum(sizes)
    g = torch.Generator().manual_seed(4321 + world)
    cases: list[dict[str, Any]] = []

    def pair(name: str, form: str, loss: str, kw: dict[str, Any], noise: float = 0.3,
             **extra: Any) -> None:
        z1 = [_rand(g, s, D) for s in sizes]
        z2 = [z + noise * _rand(g, *z.shape) for z in z1]
        kw = dict(kw, layout="cross") if form == "cross" else kw
        cases.append(dict(name=name, loss=loss, kw=kw, form=form, z1=z1, z2=z2, **extra))

    # the SimCLR two-view call loss(z1, z2): the all-views problem of the global [Z1; Z2]
    pair("two_info_nce", "two", "InfoNCE", {})
    pair("two_gca_ince", "two", "GCAInfoNCE", {"n_iter": 5})
    pair("two_gca_uot", "two", "GCAUOT", {"n_iter": 5})
    pair("two_gca_uot_generalized", "two", "GCAUOT", {"n_iter": 3, "kl": "generalized",
                                                      "rho_b": 0.5})
    pair("two_rince", "two", "RINCE", {})
    pair("two_gca_rince", "two", "GCARINCE", {"n_iter": 4})
    pair("two_iot_odd", "two", "IOT", {"n_iter": 3})  # ends on a column step
    pair("two_gca_ince_labels", "two", "GCAInfoNCE", {"n_iter": 3},
         labels=[torch.arange(s) % 2 for s in sizes])
    pair("two_gca_uot_detach", "two", "GCAUOT", {"n_iter": 4, "grad": "detach"})
    # detached rounds ending on a row step: the cross-entropy's envelope term (detached_envelope)
    pair("two_iot_detach", "two", "IOT", {"n_iter": 4, "grad": "detach"})
    pair("two_dot_metric", "two", "GCAInfoNCE", {"n_iter": 3, "metric": "dot"})
    pair("two_learnable_eps", "two", "GCAUOT", {"n_iter": 4}, eps=0.4)
    pair("two_functional_gca_uot", "two", "gca_uot", {"n_iter": 3})
    # implicit gradients after few rounds (far from "unroll" there: the cases tell them apart)
    pair("two_gca_uot_implicit", "two", "GCAUOT", {"n_iter": 2, "grad": "implicit"}, eps=0.6)
    pair("cross_gca_ince_implicit", "cross", "GCAInfoNCE", {"n_iter": 3, "grad": "implicit"})
    pair("cross_iot_implicit_odd", "cross", "IOT", {"n_iter": 5, "grad": "implicit"})
    pair("two_info_nce_implicit", "two", "InfoNCE", {"grad": "implicit"})  # no rounds
    # a small eps on unrelated views: the kernel domain's normalisers leave float64's range,
    # and the rounds fall back to the log domain on every rank
    pair("cross_log_domain", "cross", "GCAInfoNCE", {"n_iter": 3, "eps": 0.0005}, noise=5.0)
    pair("two_iot_log_domain", "two", "IOT", {"n_iter": 3, "eps": 0.0005}, noise=5.0)
    pair("cross_log_domain_detach", "cross", "GCAUOT",
         {"n_iter": 3, "eps": 0.0005, "grad": "detach", "r2": 0.0}, noise=5.0)
    none = dict(n_iter=4, reduction="none")
    pair("two_gca_ince_none", "two", "GCAInfoNCE", none,
         weights=[torch.rand(2 * s, generator=g, dtype=DT) for s in sizes])

    pair("cross_info_nce", "cross", "InfoNCE", {})
    pair("cross_gca_ince", "cross", "GCAInfoNCE", {"n_iter": 5, "divergence": "cross_entropy"})
    pair("cross_gca_uot_sum", "cross", "GCAUOT", {"n_iter": 4, "reduction": "sum"})
    pair("cross_gca_rince", "cross", "GCARINCE", {"n_iter": 3})
    pair("cross_iot", "cross", "IOT", {"n_iter": 4})
    pair("cross_iot_odd_detach", "cross", "IOT", {"n_iter": 3, "grad": "detach"})
    pair("cross_sqeuclidean", "cross", "GCAInfoNCE", {"n_iter": 3, "metric": "sqeuclidean",
                                                     "eps": 4.0})
    pair("cross_labels", "cross", "GCAInfoNCE", {"n_iter": 3},
         labels=[torch.arange(s) % 2 for s in sizes])
    T = torch.eye(n, dtype=DT) + 0.05 * torch.rand(n, n, generator=g, dtype=DT)
    pair("cross_target", "cross", "GCAInfoNCE", {"n_iter": 3}, target=T)

    def allviews(name: str, loss: str, kw: dict[str, Any], layout: str, views: int = 2,
                 **extra: Any) -> None:
        base = [_rand(g, s, D) for s in sizes]
        per_view = [[b + 0.3 * _rand(g, *b.shape) for b in base] for _ in range(views)]
        if layout == "blocked":
            local = [torch.cat([per_view[v][r] for v in range(views)]) for r in range(world)]
        else:
            local = [torch.stack([per_view[v][r] for v in range(views)], 1).reshape(-1, D)
                     for r in range(world)]
        cases.append(dict(name=name, loss=loss, kw=dict(kw, layout=layout, n_views=views),
                          form="all", z=local, views=per_view, **extra))

    allviews("blocked_gca_ince", "GCAInfoNCE", {"n_iter": 5}, "blocked")
    allviews("blocked3_gca_uot_implicit", "GCAUOT", {"n_iter": 3, "grad": "implicit"},
             "blocked", views=3, labels=None)
    allviews("blocked3_gca_uot", "GCAUOT", {"n_iter": 4}, "blocked", views=3)
    allviews("interleaved_info_nce", "InfoNCE", {}, "interleaved")
    allviews("interleaved3_gca_rince", "GCARINCE", {"n_iter": 3}, "interleaved", views=3)
    rows_lab = [torch.tensor([(7 * i + r) % 3 for i in range(2 * s)]) for r, s in
                enumerate(sizes)]
    allviews("blocked_labels_rows", "GCAInfoNCE", {"n_iter": 3}, "blocked", labels=rows_lab)
    allviews("blocked_target", "GCAUOT", {"n_iter": 3}, "blocked",
             target=_allviews_target(g, 2 * n))
    allviews("blocked_none", "GCAUOT", {"n_iter": 4, "reduction": "none"}, "blocked",
             weights=[torch.rand(2 * s, generator=g, dtype=DT) for s in sizes])
    return cases


def _allviews_target(g: torch.Generator, n: int) -> torch.Tensor:
    T = torch.rand(n, n, generator=g, dtype=DT) + 0.1
    T.fill_diagonal_(0.0)
    return T


def _global_inputs(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    if case["form"] in ("cross", "two"):
        return {"z1": torch.cat(case["z1"]), "z2": torch.cat(case["z2"])}
    if case["kw"]["layout"] == "blocked":
        return {"z": torch.cat([torch.cat(v) for v in case["views"]])}
    return {"z": torch.cat(case["z"])}


def _global_rows(case: dict[str, Any], world: int, rank: int) -> torch.Tensor:
    """Global row of each local row of ``rank``."""
    sizes = SIZES[world]
    n, off, s = sum(sizes), sum(sizes[:rank]), sizes[rank]
    if case["form"] == "cross":
        return torch.arange(s) + off
    if case["form"] == "two":
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
    out = torch.empty(sum(x.shape[0] for x in lab), dtype=lab[0].dtype)
    for r in range(world):
        out[_global_rows(case, world, r)] = lab[r]
    return out


def _call(case: dict[str, Any], distributed: Any, args: tuple, call: dict[str, Any],
          eps: Any) -> Any:
    kw = dict(case["kw"])
    if eps is not None:
        kw["eps"] = eps
    if case["loss"][0].islower():  # a functional form
        return getattr(ot, case["loss"])(*args, distributed=distributed, return_details=True,
                                         **kw, **call)
    return getattr(ot, case["loss"])(distributed=distributed, **kw)(*args, return_details=True,
                                                                    **call)


# ---------------------------------------------------------------------------------------------
# worker side


def _run_case(case: dict[str, Any], rank: int, mode: Any) -> dict[str, Any]:
    call: dict[str, Any] = {}
    if case.get("labels") is not None:
        call["labels"] = case["labels"][rank]
    if case.get("target") is not None:
        call["target"] = case["target"]
    if case["form"] in ("cross", "two"):
        leaves = {"z1": case["z1"][rank].clone().requires_grad_(True),
                  "z2": case["z2"][rank].clone().requires_grad_(True)}
        args: tuple = (leaves["z1"], leaves["z2"])
    else:
        leaves = {"z": case["z"][rank].clone().requires_grad_(True)}
        args = (leaves["z"],)
    eps = None
    if case.get("eps") is not None:
        eps = torch.tensor(case["eps"], dtype=DT, requires_grad=True)
    value, details = _call(case, mode, args, call, eps)
    weights = case.get("weights")
    out = value if weights is None else (value * weights[rank]).sum()
    out.backward()
    res = {"value": value.detach(), "grads": {k: v.grad.clone() for k, v in leaves.items()},
           "per_sample": details.per_sample.detach(), "f": details.f.detach(),
           "g": details.g.detach(), "row_mass": details.row_mass.detach()}
    if eps is not None:
        res["eps_grad"] = eps.grad.clone()
    return res


def _col_lse_checks(rank: int, world: int) -> dict[str, Any]:
    """col_logsumexp alone: value and gradient of sum_r <w_r, LSE> for per-rank weights."""
    g = torch.Generator().manual_seed(11)
    sizes = SIZES[world]
    lk = [torch.randn(s, 4, generator=g, dtype=DT) for s in sizes]
    lk[0][0, 2] = -math.inf
    phi = [torch.randn(s, generator=g, dtype=DT) for s in sizes]
    w = [torch.randn(4, generator=g, dtype=DT) for _ in sizes]
    x = lk[rank].clone().requires_grad_(True)
    p = phi[rank].clone().requires_grad_(True)
    lse = col_logsumexp(x, p)
    (lse * w[rank]).sum().backward()
    return {"lse": lse.detach(), "dx": x.grad.clone(), "dp": p.grad.clone(), "lk": lk,
            "phi": phi, "w": w}


def _error_checks(rank: int, world: int) -> dict[str, str]:
    s = SIZES[world][rank]
    z1, z2 = torch.randn(s, D, dtype=DT), torch.randn(s, D, dtype=DT)
    msgs: dict[str, str] = {}

    def expect(key: str, fn: Any) -> None:
        try:
            fn()
        except ValueError as e:
            msgs[key] = str(e)
        else:
            msgs[key] = "<no error>"

    expect("grad", lambda: ot.gca_ince(z1, z2, grad="adjoint", distributed="sharded"))
    expect("unsupported", lambda: ot.IOTUni(distributed="sharded")(z1, z2))
    expect("hyper", lambda: ot.GCAUOT(n_iter=3 + rank, distributed="sharded")(z1, z2))
    rows = 2 * s + (1 if rank == world - 1 else 0)
    expect("bad_rank", lambda: ot.InfoNCE(layout="blocked", distributed="sharded")(
        torch.randn(rows, D, dtype=DT)))
    expect("local_target", lambda: ot.GCAInfoNCE(layout="cross", distributed="sharded")(
        z1, z2, target=torch.eye(s, dtype=DT)))
    # per-row labels that leave the rows of the last rank without a positive
    lab = torch.arange(2 * s) + 100 if rank == world - 1 else torch.zeros(2 * s,
                                                                          dtype=torch.int64)
    expect("lonely_label", lambda: ot.GCAInfoNCE(layout="blocked", distributed="sharded")(
        torch.cat([z1, z2]), labels=lab))
    # a balanced GCA-RINCE reads the potentials' gauge: no implicit derivative (every rank
    # raises, from the sums over all ranks' rows)
    expect("gauge", lambda: ot.GCARINCE(n_iter=3, grad="implicit", distributed="sharded")(
        z1.requires_grad_(), z2).backward())
    z1 = z1.detach()
    msgs["after"] = str(float(ot.GCAUOT(distributed="sharded")(z1, z2)))
    # float16 input is computed in float32, as the single-process loss does
    half = ot.GCAUOT(distributed="sharded")(z1.half(), z2.half())
    msgs["half"] = f"{half.dtype} {float(half)} {float(ot.GCAUOT(distributed='sharded')(z1, z2))}"
    return msgs


class _Net(torch.nn.Module):
    """Encoder plus loss (learnable temperature) in one module, as DDP wraps it."""

    def __init__(self, variant: str, distributed: Any) -> None:
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                       torch.nn.Linear(8, 4)).to(DT)
        eps = torch.nn.Parameter(torch.tensor(0.4, dtype=DT))
        if variant == "two":
            self.loss = ot.GCAUOT(eps=eps, n_iter=4, distributed=distributed)
        else:  # blocked all-views batch, implicit gradient
            self.loss = ot.GCAInfoNCE(eps=eps, n_iter=4, layout="blocked", grad="implicit",
                                      distributed=distributed)
        self.variant = variant

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.variant == "two":
            return self.loss(self.enc(x1), self.enc(x2))
        return self.loss(self.enc(torch.cat([x1, x2])))


VARIANTS = ("two", "blocked")


def _ddp_payload(world: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(8)
    torch.manual_seed(0)
    states = {v: _Net(v, False).state_dict() for v in VARIANTS}
    x1 = [torch.randn(s, 6, generator=g, dtype=DT) for s in SIZES[world]]
    x2 = [x + 0.2 * torch.randn(*x.shape, generator=g, dtype=DT) for x in x1]
    return {"states": states, "x1": x1, "x2": x2}


def _sgd_steps(net: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for x1, x2 in batches:
        opt.zero_grad()
        net(x1, x2).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _ddp_checks(rank: int, payload: dict[str, Any]) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    out = {}
    for variant in VARIANTS:
        net = _Net(variant, "sharded")
        net.load_state_dict(payload["states"][variant])
        ddp = DistributedDataParallel(net)
        x1, x2 = payload["x1"][rank], payload["x2"][rank]
        state = _sgd_steps(ddp, [(x1, x2), (x2, x1)])
        out[variant] = {k.removeprefix("module."): v for k, v in state.items()}
    return out


def _job(rank: int, world: int, payload: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"sharded": {}, "gather": {}}
    for case in payload["cases"]:
        res["sharded"][case["name"]] = _run_case(case, rank, "sharded")
        res["gather"][case["name"]] = _run_case(case, rank, True)
    res["col_lse"] = _col_lse_checks(rank, world)
    res["errors"] = _error_checks(rank, world)
    res["ddp"] = _ddp_checks(rank, payload["ddp"])
    return res


def _entry(rank: int, world: int, rendezvous: str, outdir: str, payload: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.save(_job(rank, world, payload), Path(outdir) / f"rank{rank}.pt")
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


def _reference(case: dict[str, Any], world: int) -> dict[str, Any]:
    """The single-process loss on the concatenated batch, gradients by autograd."""
    glob = {k: v.clone().requires_grad_(True) for k, v in _global_inputs(case).items()}
    call: dict[str, Any] = {}
    lab = _labels_global(case, world)
    if lab is not None:
        call["labels"] = lab
    if case.get("target") is not None:
        call["target"] = case["target"]
    args = (glob["z1"], glob["z2"]) if case["form"] in ("cross", "two") else (glob["z"],)
    eps = None
    if case.get("eps") is not None:
        eps = torch.tensor(case["eps"], dtype=DT, requires_grad=True)
    value, details = _call(case, False, args, call, eps)
    return {"value": value, "details": details, "inputs": glob, "eps": eps}


def _check(case: dict[str, Any], world: int, results: list[dict[str, Any]]) -> None:
    name = case["name"]
    ref = _reference(case, world)
    value = ref["value"]
    if case["kw"].get("reduction", "mean") == "none":
        c = torch.zeros_like(value)
        for r in range(world):
            c[_global_rows(case, world, r)] = case["weights"][r]
        (value * c).sum().backward()
        scale = 1.0
    else:
        value.backward()
        scale = float(world)  # the gradient DDP divides by the world size
    det = ref["details"]
    eps_grads = []
    for r, res in enumerate(results):
        got, gat = res["sharded"][name], res["gather"][name]
        rows = _global_rows(case, world, r)
        expected = value.detach()[rows] if value.ndim else value.detach()
        _close(got["value"], expected, f"{name}: rank {r} value")
        _close(got["value"], gat["value"], f"{name}: rank {r} value vs gather mode")
        # details of the rank's own rows (the gather mode's cover the global problem)
        _close(got["per_sample"], det.per_sample.detach()[rows], f"{name}: per_sample")
        _close(got["f"], det.f.detach()[rows], f"{name}: details.f")
        _close(got["row_mass"], det.row_mass.detach()[rows], f"{name}: details.row_mass")
        _close(got["g"], det.g.detach(), f"{name}: details.g")
        for key, grad in got["grads"].items():
            own = rows[: rows.shape[0] // 2] if case["form"] == "two" else rows
            exp_grad = ref["inputs"][key].grad[own]
            _close(grad / scale, exp_grad, f"{name}: rank {r} d/d{key}")
            _close(grad, gat["grads"][key], f"{name}: rank {r} d/d{key} vs gather mode")
        if "eps_grad" in got:
            eps_grads.append(got["eps_grad"])
    if eps_grads:
        # DDP averages the ranks' gradients of the (replicated) temperature
        _close(sum(eps_grads) / world, ref["eps"].grad, f"{name}: d/deps averaged")


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    world = request.param
    payload = {"cases": _make_cases(world), "ddp": _ddp_payload(world)}
    results = _spawn(world, tmp_path_factory.mktemp(f"sharded{world}"), payload)
    return world, payload, results


@pytest.mark.slow
def test_sharded_losses_equal_single_process_and_gather_mode(job: Any) -> None:
    world, payload, results = job
    names = [c["name"] for c in payload["cases"]]
    assert len(names) == len(set(names))
    for case in payload["cases"]:
        _check(case, world, results)


@pytest.mark.slow
def test_ddp_steps_equal_single_process(job: Any) -> None:
    _, payload, results = job
    p = payload["ddp"]
    x1, x2 = torch.cat(p["x1"]), torch.cat(p["x2"])
    for variant in VARIANTS:
        net = _Net(variant, False)
        net.load_state_dict(p["states"][variant])
        expected = _sgd_steps(net, [(x1, x2), (x2, x1)])
        moved = max(float((expected[k] - v).abs().max()) for k, v in p["states"][variant].items())
        assert moved > 1e-3  # the steps changed the parameters
        assert float((expected["loss.eps"] - p["states"][variant]["loss.eps"]).abs()) > 1e-6
        for r, res in enumerate(results):
            got = res["ddp"][variant]
            assert set(got) == set(expected)
            for k in expected:
                _close(got[k], expected[k], f"{variant}: rank {r} parameter {k}")


@pytest.mark.slow
def test_col_logsumexp(job: Any) -> None:
    world, _, results = job
    p = results[0]["col_lse"]
    lk = torch.cat(p["lk"]).requires_grad_(True)
    phi = torch.cat(p["phi"]).requires_grad_(True)
    lse = torch.logsumexp(lk + phi[:, None], dim=0)
    (lse * sum(p["w"])).sum().backward()  # every rank's cotangent reaches every row
    start = 0
    for r, res in enumerate(results):
        s = SIZES[world][r]
        got = res["col_lse"]
        _close(got["lse"], lse.detach(), f"col_logsumexp rank {r}")
        _close(got["dx"], lk.grad[start:start + s], f"col_logsumexp d/dlk rank {r}")
        _close(got["dp"], phi.grad[start:start + s], f"col_logsumexp d/dphi rank {r}")
        start += s


@pytest.mark.slow
def test_sharded_errors_raise_on_every_rank(job: Any) -> None:
    world, _, results = job
    for r, res in enumerate(results):
        e = res["errors"]
        assert "grad in ('unroll', 'implicit', 'detach')" in e["grad"], e["grad"]
        assert "supports the losses" in e["unsupported"] and "iot_uni" in e["unsupported"]
        assert "hyper-parameters" in e["hyper"]
        assert "grad='implicit' is not defined for this loss" in e["gauge"], e["gauge"]
        if r == world - 1:
            assert "multiple of 2 rows" in e["bad_rank"]
        else:
            assert f"rank(s) [{world - 1}]" in e["bad_rank"]
        assert "target shape" in e["local_target"]
        if r == world - 1:
            assert "without any positive" in e["lonely_label"]
        else:
            assert "another rank rejected" in e["lonely_label"]
        assert math.isfinite(float(e["after"]))
        dtype, half, full = e["half"].split()
        assert dtype == "torch.float32" and abs(float(half) - float(full)) < 1e-2


def test_sharded_without_process_group() -> None:
    assert not dist.is_initialized()
    z1, z2 = torch.randn(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    with pytest.raises(RuntimeError, match="sharded"):
        ot.GCAUOT(distributed="sharded")(z1, z2)
    with pytest.raises(RuntimeError, match="sharded"):
        ot.info_nce(z1, z2, distributed="sharded")
    with pytest.raises(RuntimeError, match="process group"):
        col_logsumexp(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(TypeError, match="'sharded'"):
        ot.InfoNCE(distributed="shard")
    with pytest.raises(TypeError, match="'sharded'"):
        ot.gca_uot(z1, z2, distributed="gather")
