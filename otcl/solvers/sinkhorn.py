"""Entropic and unbalanced optimal transport by Sinkhorn scaling: one code path, three domains.

The problem, for cost ``C`` (``n x m``), marginals ``a``, ``b``, entropic strength ``eps`` and
marginal penalties ``rho_a``, ``rho_b`` (``inf`` = hard constraint), is

    min_P  <C, P> + eps * KL(P || 1) + rho_a * KL(P 1 || a) + rho_b * KL(P^T 1 || b),

with ``KL(x || y) = sum x log(x / y) - x + y``. Its solution is ``P = exp((f + g - C) / eps)``,
and Sinkhorn alternates the exact minimisations over ``f`` and ``g``:

    f <- t_a * (eps log a - eps LSE_j((g_j - C_ij) / eps)),     t_a = rho_a / (rho_a + eps),
    g <- t_b * (eps log b - eps LSE_i((f_i - C_ij) / eps)),     t_b = rho_b / (rho_b + eps).

In scaling form (``u = exp(f/eps)``, ``K = exp(-C/eps)``) the row update is
``u = (a / (K v))^t_a``: for ``t_a = 1`` the balanced Sinkhorn–Knopp step, otherwise the
unbalanced step of Chizat et al. (2018). Three domains compute the same iteration:

* ``"kernel"``: matrix-vector products with ``K`` (fast; exact only while ``K``, ``u``, ``v``
  stay within the dtype's range);
* ``"stabilized"``: the same products with the kernel ``exp((f + g - C)/eps)`` in which large
  potentials are absorbed at every check (Schmitzer 2019), so small ``eps`` stays fast and exact;
* ``"log"``: log-sum-exp updates of the potentials (always safe, slowest).

``"auto"`` (the default) uses ``"kernel"`` when ``(max C - min C) / eps`` is below half the
dtype's exponent range (float32: 43.6, float64: 354), and ``"stabilized"`` otherwise; a kernel
domain whose scalings leave the floating-point range anyway finishes in the log domain.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from otcl.backend import (
    Array,
    check_compatible,
    dtype_eps,
    dtype_tiny,
    host_thread_pool,
    is_array,
    logsumexp,
    namespace,
    quiet_numerics,
    safe_log,
    to_float,
    to_numpy,
    torch_blas_limit,
)
from otcl.ops import ArrayOps, array_ops
from otcl.ops.base import LOG2E, Base2
from otcl.ops.torch_ops import TorchCpuOps
from otcl.solvers.problem import Problem, make_problem
from otcl.solvers.result import ConvergenceWarning, Transport, finish_diagnostics
from otcl.tracing import plain_ops

__all__ = ["DOMAINS", "default_tol", "row_projection", "sinkhorn", "solve"]

DOMAINS = ("auto", "kernel", "stabilized", "log")

TOL_FLOAT64 = 1e-9
"""Default tolerance in float64 (and any dtype of at least its precision)."""

TOL_EPS_FACTOR = 8
"""Below float64 the default tolerance is this many machine epsilons of the dtype (float32:
``9.5e-7``), rounded to ``1e-6``: measured plateaus of converged float32 problems (cosine costs,
``n`` 64-1024, ``eps`` 0.01-0.5, all domains, balanced and unbalanced) were at most
``2.4e-7``, two epsilons."""


def default_tol(xp: Any, dtype: Any) -> float:
    """The default ``tol`` of [`sinkhorn`][otcl.solvers.sinkhorn.sinkhorn] for ``dtype``: ``1e-9``
    for float64, ``1e-6`` for float32, i.e. ``max(1e-9, 8 eps)`` rounded up to a power of ten
    (``eps`` the machine epsilon), a level a converged problem reaches in that precision."""
    level = max(TOL_FLOAT64, TOL_EPS_FACTOR * dtype_eps(xp, dtype))
    return float(10.0 ** math.ceil(math.log10(level) - 1e-12))


def sinkhorn(
    cost: Array,
    a: Array | None = None,
    b: Array | None = None,
    *,
    eps: float | Array,
    rho_a: float = math.inf,
    rho_b: float = math.inf,
    mask: Array | None = None,
    max_iter: int = 1000,
    tol: float | str | None = "auto",
    domain: str = "auto",
    check_every: int = 10,
    init: tuple[Array, Array] | None = None,
    warn: bool = True,
) -> Transport:
    """Solve balanced, semi-relaxed or unbalanced entropic OT.

    Parameters
    ----------
    cost:
        ``C`` of shape ``(n, m)`` or ``(B, n, m)``; any real floating dtype, any supported
        library. Must be finite; exclude entries with ``mask`` instead of ``inf``.
    a, b:
        Marginals of shape ``(n,)``/``(B, n)`` and ``(m,)``/``(B, m)``, non-negative;
        ``None`` = uniform ``1/n`` (``1/m``).
    eps:
        Entropic strength ``> 0`` (a float, or a 0-d array to differentiate through it).
    rho_a, rho_b:
        KL penalties on the row and column marginals; ``inf`` (default) is a hard constraint.
        ``rho_a=inf, rho_b=x`` is semi-relaxed OT. POT calls these ``reg_m``.
    mask:
        Optional boolean array of shape ``(n, m)`` (one mask for every problem of a batch) or
        ``(B, n, m)``: ``False`` entries are excluded
        (``P_ij = 0``, as if ``C_ij = +inf``).
    max_iter:
        Maximum number of rounds (a round is one row and one column update).
    tol:
        Stop when the relative row-marginal error ``||P1 - a||_1 / ||a||_1`` (balanced) or the
        fixed-point residual ``max |log u_new - log u_old|`` (unbalanced) is ``<= tol`` for every
        problem. ``"auto"`` (default): a tolerance reachable in the cost's dtype,
        [`default_tol`][otcl.solvers.sinkhorn.default_tol] — ``1e-9`` for float64 and ``1e-6`` for
        float32 (a converged float32 problem plateaus at an error of one to two machine epsilons,
        ``1.2e-7``–``2.4e-7``, so ``1e-9`` would run every float32 call to ``max_iter``). ``None``
        runs exactly ``max_iter`` rounds with no check (for use inside losses).
    domain:
        ``"auto"``, ``"kernel"``, ``"stabilized"`` or ``"log"`` (see the module docstring).
    check_every:
        Rounds between convergence checks; the only host synchronisations of the loop.
    init:
        Warm start ``(f, g)`` from an earlier solve.
    warn:
        Emit a [`ConvergenceWarning`][otcl.ConvergenceWarning] when a problem does not reach
        ``tol``, and before the solve when the input limits its precision (an offset cost:
        ``max |C|`` far above its range, with ``max |C| / eps`` machine epsilons above the square
        root of one; balanced masses that differ by more than ``tol``).

    Returns
    -------
    Transport
        Potentials ``f``, ``g`` with ``P = exp((f + g - C)/eps)``, the plan (lazily), iteration
        counts, errors and ``converged``.
    """
    with host_thread_pool(cost, a, b):
        return _sinkhorn(cost, a, b, eps=eps, rho_a=rho_a, rho_b=rho_b, mask=mask,
                         max_iter=max_iter, tol=tol, domain=domain, check_every=check_every,
                         init=init, warn=warn)


def _sinkhorn(cost: Array, a: Array | None, b: Array | None, *, eps: float | Array,
              rho_a: float, rho_b: float, mask: Array | None, max_iter: int,
              tol: float | str | None, domain: str, check_every: int,
              init: tuple[Array, Array] | None, warn: bool) -> Transport:
    """[`sinkhorn`][otcl.sinkhorn] inside its thread-pool context."""
    problem = make_problem(cost, a, b, eps=eps, rho_a=rho_a, rho_b=rho_b, mask=mask)
    traced = plain_ops(problem.cost) or plain_ops(problem.eps)
    if traced and tol is not None:
        raise ValueError(
            "under a transform (jax.jit / grad / vmap, torch.compile, torch.func) the number of "
            "rounds must be fixed: pass tol=None and max_iter=<rounds> (a convergence check "
            "reads values, which a tracer does not have)"
        )
    if isinstance(tol, str) and tol == "auto":
        tol = default_tol(problem.xp, problem.cost.dtype)
    max_iter, tol, check_every = _validate_loop(max_iter, tol, check_every)
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    init_b = _validate_init(init, problem)
    if traced:
        return _traced_rounds(problem, max_iter, init_b)
    if warn:
        _warn_on_precision_limits(problem, tol)
    return solve(
        problem,
        max_iter=max_iter,
        tol=tol,
        domain=domain,
        check_every=check_every,
        init=init_b,
        warn=warn,
    )


def row_projection(
    cost: Array,
    a: Array | None = None,
    *,
    eps: float | Array,
    rho_a: float = math.inf,
    g: Array | None = None,
    mask: Array | None = None,
) -> Transport:
    """One row ("half-step") KL projection of the kernel: the plan behind InfoNCE.

    Returns ``P = diag(u) K diag(v)`` with ``K = exp(-C/eps)``, ``v = exp(g/eps)`` (``g = 0`` by
    default) and ``u = (a / (K v))^t``, ``t = rho_a / (rho_a + eps)``. With ``rho_a = inf`` this is
    the closed-form KL projection onto ``{P >= 0 : P 1 = a}``, i.e. ``P_ij = a_i K_ij v_j /
    sum_k K_ik v_k``. The column marginal is not constrained (``marginal_error_b`` is measured
    against the uniform marginal). ``g`` of shape ``(m,)`` / ``(B, m)`` must be finite
    (``ValueError`` otherwise, as for ``cost`` and ``a``).
    """
    problem = make_problem(cost, a, None, eps=eps, rho_a=rho_a, rho_b=math.inf, mask=mask,
                           mass_rtol=math.inf)
    xp = problem.xp
    B, _, m = problem.shape
    if g is None:
        gamma = xp.zeros((B, m), dtype=problem.cost.dtype, device=_dev(problem))
    else:
        check_compatible(cost=problem.cost, g=g)
        g_b = _as_batch_vec(g, B, m, "g")
        if not bool(xp.all(xp.isfinite(g_b))):
            raise ValueError("g contains NaN or inf (a potential must be finite; exclude "
                             "columns with mask instead)")
        gamma = xp.broadcast_to(g_b, (B, m)) / problem.eps
    log_a, _ = problem.log_marginals()
    phi = log_row_update(problem.log_kernel(), log_a, gamma, problem.t_a, xp)
    return _transport(problem, phi, gamma, np.ones(B, dtype=int), None, None, "log", warn=False)


# --------------------------------------------------------------------------------------------
# The iteration, written once in scaled potentials phi = f / eps, gamma = g / eps.


def log_row_update(log_kernel: Array, log_a: Array, gamma: Array, t_a: Any, xp: Any) -> Array:
    """``phi_i = t_a (log a_i - LSE_j(log K_ij + gamma_j))``, batched: ``(B,n,m), (B,n), (B,m)``."""
    lse = logsumexp(log_kernel + gamma[:, None, :], 2, xp)
    return _guarded_update(log_a, lse, t_a, xp)


def log_col_update(log_kernel: Array, log_b: Array, phi: Array, t_b: Any, xp: Any) -> Array:
    """``gamma_j = t_b (log b_j - LSE_i(log K_ij + phi_i))``, batched."""
    lse = logsumexp(log_kernel + phi[:, :, None], 1, xp)
    return _guarded_update(log_b, lse, t_b, xp)


def _guarded_update(log_m: Array, lse: Array, t: Any, xp: Any) -> Array:
    # A zero-mass row (log a = -inf) gets phi = -inf even where its LSE is -inf too.
    raw = log_m - xp.where(lse > -math.inf, lse, xp.zeros_like(lse))
    # an array t (from an array eps) is multiplied whatever its value: no read of it here
    out = raw if isinstance(t, (int, float)) and t == 1.0 else t * raw
    return xp.where(log_m > -math.inf, out, xp.full_like(out, -math.inf))


def _positive_marginals(problem: Problem) -> bool:
    """Every entry of both marginals is positive (one host read)."""
    xp = problem.xp
    return bool(xp.all(problem.a > 0) & xp.all(problem.b > 0))


def _plain_update(log_m: Array, lse: Array, t: Any, xp: Any) -> Array:
    """``t (log m - lse)`` for finite ``log m`` and ``lse`` (what ``_guarded_update`` gives
    there)."""
    raw = log_m - lse
    return raw if isinstance(t, (int, float)) and t == 1.0 else t * raw


def solve(
    problem: Problem,
    *,
    max_iter: int,
    tol: float | None,
    domain: str = "auto",
    check_every: int = 10,
    init: tuple[Array, Array] | None = None,
    warn: bool = True,
) -> Transport:
    """Run Sinkhorn on an already validated [`Problem`][otcl.solvers.problem.Problem] (no input
    checks).

    The loops reuse preallocated buffers (one or two ``n x m`` matrices and a few vectors) when the
    library allows it and no autograd engine records the inputs
    ([`otcl.ops.array_ops`][otcl.ops.array_ops]); otherwise every step allocates its result
    and stays differentiable. Both compute the same iteration.
    """
    xp = problem.xp
    B, n, m = problem.shape
    dtype = problem.cost.dtype
    if init is not None:
        phi, gamma = init[0] / problem.eps, init[1] / problem.eps
    else:
        phi = xp.zeros((B, n), dtype=dtype, device=_dev(problem))
        gamma = xp.zeros((B, m), dtype=dtype, device=_dev(problem))
    floor = None  # per-problem min C, once computed
    auto = domain == "auto"
    if auto:
        domain, floor = _choose_domain(problem, warm=init is not None)
    if max_iter == 0:
        # no rounds: the starting potentials are the result; with a tol, report their error
        error = None
        if tol is not None:
            with quiet_numerics(xp):
                error = _LogLoop(problem, phi, gamma, tol, check_every)._final_error()
        return _transport(problem, phi, gamma, np.zeros(B, dtype=np.int64), error, tol, domain,
                          warn=warn)
    ops = array_ops(xp, problem.cost, problem.a, problem.b, problem.eps, *(init or ()))
    make: Callable[..., _LogLoop | _ScalingLoop]
    if domain == "log":
        make = functools.partial(_LogLoop, tol=tol, check_every=check_every)
    else:
        cold = domain == "kernel" and init is None
        if cold:
            floor = _cost_bounds(problem)[0] if floor is None else floor
            phi = phi + floor[:, None] / problem.eps
        make = functools.partial(_ScalingLoop, tol=tol, check_every=check_every,
                                 stabilized=domain != "kernel", cold=cold)
    loop, (phi, gamma) = _run_loop(make, problem, phi, gamma, max_iter, ops)
    if auto and loop.stopped_at is not None:
        # "auto" chose the kernel domain from the cost's range, and the iterates left the
        # floating-point range anyway (potentials of an unbalanced problem far from its
        # marginals, a tiny marginal entry): finish in the log domain from the last healthy round
        make = functools.partial(_LogLoop, tol=tol, check_every=check_every,
                                 start=loop.stopped_at)
        loop, (phi, gamma) = _run_loop(make, problem, phi, gamma, max_iter, ops)
    return _transport(
        problem, phi, gamma, loop.n_iter, loop.error, tol, loop.domain, warn=warn,
        trouble=loop.trouble,
    )


def _run_loop(make: Callable[..., Any], problem: Problem, phi: Array, gamma: Array,
              max_iter: int, ops: ArrayOps) -> tuple[Any, tuple[Array, Array]]:
    """Build a loop with ``make(problem, phi, gamma, ops=ops)``, run it and return it with its
    final potentials ``(phi, gamma)``.

    On PyTorch CPU tensors the loop runs on NumPy views of the same memory
    ([`_host_problem`][otcl.solvers.sinkhorn._host_problem]), with NumPy's BLAS pool limited to
    torch's thread count: a round's passes over the matrix cost the same or less in NumPy
    (grouped additions, float32 ``exp2``), and its vector operations cost a fraction of torch's
    per-call dispatch (1-2 microseconds against 5-10; a kernel round at n = 1024 took 0.19 ms on
    torch tensors and 0.14 ms on NumPy arrays, one thread). The potentials come back as tensors
    on the loop's arrays.
    """
    on_host = _host_problem(problem, ops, phi, gamma)
    if on_host is None:
        with quiet_numerics(problem.xp):
            loop = make(problem, phi, gamma, ops=ops)
            loop.run(max_iter)
        return loop, loop.potentials()
    host, phi_h, gamma_h = on_host
    with torch_blas_limit(), quiet_numerics(host.xp):
        loop = make(host, phi_h, gamma_h, ops=array_ops(host.xp, host.cost))
        loop.run(max_iter)
    phi_h, gamma_h = loop.potentials()
    return loop, (ops.from_host(phi_h), ops.from_host(gamma_h))  # type: ignore[attr-defined]


def _host_problem(problem: Problem, ops: ArrayOps, phi: Array,
                  gamma: Array) -> tuple[Problem, Array, Array] | None:
    """The problem and the potentials as NumPy views of the same memory when ``ops`` are
    PyTorch CPU operations that have them
    ([`TorchCpuOps.host_views`][otcl.ops.torch_ops.TorchCpuOps.host_views]; not for a tensor
    ``eps``), else ``None``."""
    if not isinstance(ops, TorchCpuOps) or is_array(problem.eps):
        return None
    views = ops.host_views(problem.cost, problem.mask, problem.a, problem.b, phi, gamma)
    if views is None:
        return None
    cost, mask, a, b, phi_h, gamma_h = views
    bounds = None if problem.cost_bounds is None else ops.host_views(*problem.cost_bounds)
    host = replace(problem, xp=namespace(cost), cost=cost, mask=mask, a=a, b=b,
                   cost_bounds=None if bounds is None else tuple(bounds))
    return host, phi_h, gamma_h  # type: ignore[return-value]


def _traced_rounds(problem: Problem, max_iter: int,
                   init: tuple[Array, Array] | None) -> Transport:
    """``max_iter`` log-domain rounds written with plain array operations, for arrays whose
    values a transform hides: the transform traces (``jax.jit``, ``torch.compile``) or
    differentiates (``jax.grad``, ``torch.func.grad``) them as written. No host read, no
    convergence check (``error`` and ``converged`` are ``None``)."""
    xp = problem.xp
    B, n, m = problem.shape
    log_k = problem.log_kernel()
    log_a, log_b = problem.log_marginals()
    if init is not None:
        phi, gamma = init[0] / problem.eps, init[1] / problem.eps
    else:
        gamma = xp.zeros((B, m), dtype=problem.cost.dtype, device=_dev(problem))
        phi = xp.zeros((B, n), dtype=problem.cost.dtype, device=_dev(problem))
    for _ in range(max_iter):
        phi = log_row_update(log_k, log_a, gamma, problem.t_a, xp)
        gamma = log_col_update(log_k, log_b, phi, problem.t_b, xp)
    return _transport(problem, phi, gamma, np.full(B, max_iter, dtype=np.int64), None, None,
                      "log", warn=False)


def choose_domain(problem: Problem, *, warm: bool = False) -> str:
    """``"kernel"`` when ``exp(-(C - min C)/eps)`` and the scalings cannot leave the dtype's
    range, ``"stabilized"`` otherwise. A warm start always uses ``"stabilized"``."""
    return _choose_domain(problem, warm=warm)[0]


OFFSET_RATIO = 8.0
"""A cost counts as offset when its largest magnitude is more than this many times its range."""


def _warn_on_precision_limits(problem: Problem, tol: float | None) -> None:
    """Warn ([`ConvergenceWarning`][otcl.ConvergenceWarning]) before a solve whose answer the
    input's precision limits:

    * an offset cost (unmasked: from the bounds the validation kept): ``max |C|`` far above
      the range ``max C - min C`` (balanced OT does not change when a constant is added to
      ``C``, but ``-C / eps`` keeps only the digits that the offset leaves, a relative error of
      about ``max |C| / eps`` machine epsilons in every plan entry) when that error exceeds the
      square root of the machine epsilon;
    * a balanced problem whose marginals' total masses differ by more than ``tol`` (the
      validation accepts up to ``sqrt`` of the machine epsilon): the row-marginal error cannot
      fall below the gap."""
    xp = problem.xp
    u = dtype_eps(xp, problem.cost.dtype)
    eps = to_float(problem.eps)
    # the bounds the validation kept (none with a mask: no extra pass over the cost for this)
    bounds = problem.cost_bounds
    lo, hi = (np.zeros(1), np.ones(1)) if bounds is None else (_to_host(x) for x in bounds)
    size = np.maximum(np.abs(lo), np.abs(hi))
    offset = (size > OFFSET_RATIO * (hi - lo)) & (size / eps * u > math.sqrt(u))
    if np.any(offset):
        k = int(np.argmax(np.where(offset, size, -np.inf)))
        warnings.warn(
            f"the cost is offset: its values reach {size[k]:.3g} but span only "
            f"{hi[k] - lo[k]:.3g}, and eps = {eps:.3g}, so -C/eps keeps a relative precision of "
            f"about {size[k] / eps * u:.1g} in {problem.cost.dtype} and so does every entry of "
            "the plan. Subtract the cost's minimum before the call (a balanced plan does not "
            "change; shift f back by it), or use float64.",
            ConvergenceWarning, stacklevel=4,
        )
    if problem.balanced and tol is not None:
        ma = _to_host(xp.sum(problem.a, axis=-1))
        mb = _to_host(xp.sum(problem.b, axis=-1))
        gap = np.abs(ma - mb) / np.maximum(ma, mb)
        if np.any(gap > tol):
            warnings.warn(
                f"the total masses of a and b differ by {float(gap.max()):.3g} (relative), more "
                f"than tol = {tol:.3g}: a balanced plan has one total mass, so the row-marginal "
                "error cannot fall below that gap. Normalise a and b to the same mass.",
                ConvergenceWarning, stacklevel=4,
            )


def _choose_domain(problem: Problem, *, warm: bool) -> tuple[str, Array | None]:
    """[`choose_domain`][otcl.solvers.sinkhorn.choose_domain], and the per-problem ``min C``
    ``(B,)`` when it was computed."""
    if warm:
        return "stabilized", None
    xp = problem.xp
    budget = 0.5 * -math.log(dtype_tiny(xp, problem.cost.dtype))
    eps = to_float(problem.eps)
    lo, hi = _cost_bounds(problem)
    spread = to_float(xp.max(hi - lo)) / eps
    if not problem.balanced:
        # the unbalanced update carries a factor exp(-(1 - t) * min C / eps)
        spread = max(spread, to_float(xp.max(xp.abs(lo))) / eps)
    return ("kernel" if spread <= budget else "stabilized"), lo


class _LogLoop:
    """Log-sum-exp updates of the scaled potentials."""

    domain = "log"

    def __init__(self, problem: Problem, phi: Array, gamma: Array, tol: float | None,
                 check_every: int, start: int = 0, *, ops: ArrayOps | None = None,
                 log_k: Array | None = None, work: Array | None = None) -> None:
        """``log_k``: a natural-units log-kernel ``-C / eps`` to use as it is (never written;
        by default the loop computes its own, possibly in base-2 units); ``work``: the scratch
        for the ``n x m`` log-sum-exps (by default a fresh buffer)."""
        self.p, self.phi, self.gamma = problem, phi, gamma
        self.tol, self.check_every = tol, check_every
        self.xp = xp = problem.xp
        self.ops = ops = ArrayOps(self.xp) if ops is None else ops
        # scratch for the n x m log-sum-exp (None: allocate per step)
        self.work = ops.buffer(problem.shape, problem.cost) if work is None else work
        self.log_a, self.log_b = problem.log_marginals()
        self.tracker = _Tracker(problem.shape[0], tol, start)
        self.trouble: str | None = None
        # minus the previous round's log-sum-exps: the buffered log-sum-exp's stabilising shift,
        # one pass cheaper than each slice's maximum; for the first row step, minus an upper
        # bound of every row's maximum term, max log K + max gamma (per problem)
        self._row_hint: Array | None = None
        self._col_hint: Array | None = None
        # positive marginals and no mask: every log-sum-exp is finite (a buffered one redoes any
        # slice out of range), so the updates need no guard for empty rows (two operations
        # instead of eight per update; read once, before the loop)
        self._update = _guarded_update
        plain = ops.inplace and problem.mask is None and _positive_marginals(problem)
        if plain:
            self._update = _plain_update
        # the log-kernel in base-2 units where the library's exp2 is the faster exponential
        # (None: natural units)
        self.base2: Base2 | None = None
        own = log_k is None
        if own and ops.inplace and ops.base2(problem.cost.dtype):
            self.base2 = _base2(problem, ops, plain)
        self.log_k = _log_kernel(problem, ops, base2=self.base2 is not None) if own else log_k
        # row potentials folded into the log-kernel's rows, log_k = units * (-C / eps + alpha_i)
        # (natural units, (B, n); None: nothing folded), so that at small eps, where the row
        # hints spread by more than a log-sum-exp can fold into one shift, a row pass still
        # takes one addition per entry instead of two (plain problems: finite potentials)
        self.absorbed: Array | None = None
        self._absorbs = plain and own
        self._low = None if self.base2 is None else self.base2.low  # before any folding
        self._fold_limit = 0.5 * -math.log(dtype_tiny(xp, problem.cost.dtype))
        if ops.inplace:
            top = xp.max(self.log_k, axis=(1, 2))
            if self.base2 is not None:
                top = top / LOG2E
            self._row_hint = -(top + xp.max(gamma, axis=1))[:, None]

    @property
    def n_iter(self) -> np.ndarray:
        return self.tracker.n_iter

    @property
    def error(self) -> np.ndarray | None:
        return self.tracker.error

    def run(self, max_iter: int) -> None:
        p, xp, tr = self.p, self.xp, self.tracker
        it = tr.start
        while it < max_iter:
            check = tr.tol is not None and tr.due(it, self.check_every)
            lse, rows = self._lse_rows(self.gamma)
            if check and p.balanced and tr.record(it, _row_error(xp, self.phi, lse, p.a)):
                return
            phi_new = self._update(self.log_a, lse, p.t_a, xp)
            if check and not p.balanced:
                residual = _max_abs_change(xp, phi_new, self.phi)
                self.phi = phi_new
                self.gamma = self._col_update(self.phi, rows)
                if tr.record(it + 1, residual):
                    return
            else:
                self.phi = phi_new
                self.gamma = self._col_update(self.phi, rows)
            it += 1
        tr.finish(max_iter, self._final_error)

    def _lse_rows(self, gamma: Array) -> tuple[Array, Any]:
        """``LSE_j(log K_ij + gamma_j)``, ``(B, n)``, and what of it ``_col_update`` can reuse
        (``None`` if nothing)."""
        hint = self._row_hint
        if self._absorbs and hint is not None and self._spread(hint) > self._fold_limit:
            self._absorb(hint)
        alpha = self.absorbed
        if alpha is not None:
            hint = hint - alpha
        lse, rows = self.ops.lse_rows_keep(self.log_k, gamma, self.work, hint, self.base2)
        if alpha is not None:
            lse = lse - alpha
        if self.ops.inplace:
            self._row_hint = -lse
        return lse, rows

    def _spread(self, hint: Array) -> float:
        """The largest per-problem spread of the row hints on the folded log-kernel."""
        h = hint if self.absorbed is None else hint - self.absorbed
        return self.ops.spread(h)  # NaN: no absorption

    def _absorb(self, alpha: Array) -> None:
        """Fold ``alpha`` ``(B, n)`` into the log-kernel's rows, recomputed from the cost (so
        that no rounding accumulates over foldings)."""
        p, ops, xp = self.p, self.ops, self.xp
        unit = 1.0 if self.base2 is None else LOG2E
        ops.scaled(p.cost, p.eps / unit if unit != 1.0 else p.eps, out=self.log_k)
        ops.add(self.log_k, (alpha * unit)[:, :, None], out=self.log_k)
        if self._low is not None:
            self.base2 = Base2(self._low + unit * xp.min(alpha, axis=1))
        self.absorbed = alpha

    def _col_update(self, phi: Array, rows: Any = None) -> Array:
        """``gamma_j = t_b (log b_j - LSE_i(log K_ij + phi_i))``."""
        shift = phi if self.absorbed is None else phi - self.absorbed
        lse = self.ops.lse_cols_from_rows(self.log_k, shift, rows, self.work, self._col_hint,
                                          self.base2)
        if self.ops.inplace:
            self._col_hint = -lse
        return self._update(self.log_b, lse, self.p.t_b, self.xp)

    def _final_error(self) -> np.ndarray:
        p, xp = self.p, self.xp
        lse, _ = self._lse_rows(self.gamma)
        if p.balanced:
            return _row_error(xp, self.phi, lse, p.a)
        return _max_abs_change(xp, _guarded_update(self.log_a, lse, p.t_a, xp), self.phi)

    def potentials(self) -> tuple[Array, Array]:
        return self.phi, self.gamma


class _ScalingLoop:
    """Matrix-vector scaling iterations on an (optionally absorbed) kernel.

    The kernel is ``Kt = exp(phi_i + gamma_j - C_ij / eps)`` and the scalings ``u``, ``v`` act on
    it, so the potentials are ``phi + log u`` and ``gamma + log v``. In the unbalanced update the
    absorbed part contributes a fixed factor: ``u = (a / (Kt v))^t * exp(-(1 - t) phi)``.

    With buffered operations a round that needs no convergence check is one fused sweep when the
    kernel is large ([`ArrayOps.blocks`][otcl.ops.base.ArrayOps.blocks]): for each block of rows,
    ``Kt v``, the new ``u`` on those rows and their contribution ``Kt[rows]^T u[rows]`` to the
    column product, while the block is still in cache, so the kernel is read from memory once per
    round instead of twice. Successive sweeps run in opposite directions, so that the blocks read
    last are still cached when the next sweep starts. A round computes the same quantities in the
    same order as the unfused one; only the summation order of ``Kt^T u`` differs.
    """

    def __init__(self, problem: Problem, phi: Array, gamma: Array, tol: float | None,
                 check_every: int, *, stabilized: bool, ops: ArrayOps, cold: bool = False) -> None:
        self.p, self.xp, self.ops = problem, problem.xp, ops
        self.tol, self.check_every = tol, check_every
        self.stabilized = stabilized
        self.domain = "stabilized" if stabilized else "kernel"
        xp, (B, n, m) = self.xp, problem.shape
        self.tracker = _Tracker(B, tol, 0)
        self.trouble: str | None = None
        self.stopped_at: int | None = None  # the last healthy round, where "kernel" stopped
        self.absorb_at = 0.25 * -math.log(dtype_tiny(xp, problem.cost.dtype))
        # zero marginal entries need a guarded (allocating) scaling step
        self.guarded = not _positive_marginals(problem)
        # the buffered kernel domain builds its kernel straight from the cost, once; the
        # stabilized loop keeps the log-kernel for re-absorbing
        log_k = _log_kernel(problem, ops) if stabilized or not ops.inplace else None
        self.log_k = log_k
        self.kernel = ops.buffer(problem.shape, problem.cost)
        like = problem.cost
        self.kv, self.u_alt = ops.buffer((B, n), like), ops.buffer((B, n), like)
        self.ktu, self.tmp = ops.buffer((B, m), like), ops.buffer((B, m), like)
        if stabilized:
            # one log-domain round puts the potentials in the right range before absorbing
            log_a, log_b = problem.log_marginals()
            lse = ops.logsumexp_shifted(log_k, gamma, 2, self.kernel)
            phi = _guarded_update(log_a, lse, problem.t_a, xp)
            lse = ops.logsumexp_shifted(log_k, phi, 1, self.kernel)
            gamma = _guarded_update(log_b, lse, problem.t_b, xp)
            self.tracker.start = 1
        self._absorb(phi, gamma, cold=cold)
        self.sweep = ops.blocks(self.kernel) if ops.inplace and not self.guarded else None
        self.forward = True
        self._views: list | None = None  # the sweep's blocks of the current buffers

    @property
    def n_iter(self) -> np.ndarray:
        return self.tracker.n_iter

    @property
    def error(self) -> np.ndarray | None:
        return self.tracker.error

    def _absorb(self, phi: Array, gamma: Array, cold: bool = False) -> None:
        """Absorb ``(phi, gamma)`` into the kernel (``cold``: ``gamma`` is exactly zero)."""
        xp, p, ops = self.xp, self.p, self.ops
        self.phi, self.gamma = phi, gamma
        col = None if cold else gamma
        bounds = self._exponent_bounds(phi, col)
        if self.log_k is None:
            kernel = ops.exp_shifted(p.cost, phi, col, out=self.kernel, divisor=p.eps,
                                     bounds=bounds)
            if p.mask is not None:
                kernel = ops.fill_where(kernel, ~p.mask, 0.0)
            self.kernel = kernel
        else:
            self.kernel = ops.exp_shifted(self.log_k, phi, col, out=self.kernel, bounds=bounds)
        self.u = xp.ones_like(phi)
        self.v = xp.ones_like(gamma)
        self.w_a = None if p.t_a == 1.0 else _finite_exp(-(1 - p.t_a) * phi, xp)
        self.w_b = None if p.t_b == 1.0 else _finite_exp(-(1 - p.t_b) * gamma, xp)
        self._views = None

    def _exponent_bounds(self, phi: Array, gamma: Array | None) -> tuple[float, float] | None:
        """Bounds of the kernel's exponents ``phi_i + gamma_j - C_ij / eps`` from the cost's
        bounds and the vectors' (one host read), or ``None`` where they are not worth reading:
        no buffered base-2 exponential for the dtype, or a mask (whose cost bounds the
        validation did not keep)."""
        p, ops, xp = self.p, self.ops, self.xp
        if not ops.inplace or p.cost_bounds is None or not ops.base2(p.cost.dtype):
            return None
        lo, hi = p.cost_bounds
        eps = p.eps
        low = xp.min(phi, axis=1) - hi / eps
        high = xp.max(phi, axis=1) - lo / eps
        if gamma is not None:
            low = low + xp.min(gamma, axis=1)
            high = high + xp.max(gamma, axis=1)
        both = to_numpy(xp.stack([xp.min(low), xp.max(high)]))
        return float(both[0]), float(both[1])

    def _scale(self, marginal: Array, kv: Array, t: Any, w: Array | None,
               out: Array | None = None) -> Array:
        """``marginal / kv`` (``0`` where the marginal is), times ``^t * w`` when relaxed."""
        if self.guarded:
            xp = self.xp
            ratio = xp.where(marginal > 0, marginal / kv, xp.zeros_like(kv))
            return ratio if w is None else ratio**t * w
        ops = self.ops
        ratio = ops.divide(marginal, kv, out=out)
        return ratio if w is None else ops.multiply(ops.power(ratio, t, out=out), w, out=out)

    def potentials(self) -> tuple[Array, Array]:
        xp = self.xp
        return self.phi + safe_log(self.u, xp), self.gamma + safe_log(self.v, xp)

    def _snapshot(self, it: int) -> tuple:
        ops = self.ops
        return (it, self.phi, self.gamma, ops.snapshot(self.u), ops.snapshot(self.v))

    def run(self, max_iter: int) -> None:
        tr = self.tracker
        it = tr.start
        good = self._snapshot(it)
        while it < max_iter:
            if tr.due(it, self.check_every):
                if not self._healthy():
                    self._recover(good, max_iter)
                    return
                if self.stabilized:
                    self._absorb_if_large()
                good = self._snapshot(it)
                if tr.tol is not None:
                    if self._monitored_round(it, good):
                        return
                    it += 1
                    continue
            self._round()
            it += 1
        if not self._healthy():
            self._recover(good, max_iter)
            return
        tr.finish(max_iter, self._final_error)

    def _round(self) -> Array:
        """One round ``u = scale(a, Kt v)``, ``v = scale(b, Kt^T u)``, fused when it pays.
        Returns ``Kt v`` for the ``v`` the round started from."""
        p, ops, K = self.p, self.ops, self.kernel
        if self.sweep is None:
            kv = ops.matvec(K, self.v, out=self.kv)
            self.u = self._scale(p.a, kv, p.t_a, self.w_a, out=self.u)
            ktu = ops.rmatvec(K, self.u, out=self.ktu)
            self.v = self._scale(p.b, ktu, p.t_b, self.w_b, out=self.v)
            return kv
        if self._views is None:
            self._views = self._block_views()
        t_a, t_b = p.t_a, p.t_b
        forward = self.forward
        for v, ktu, tmp, b, w_b, rows in self._views if forward else self._views[::-1]:
            if len(rows) == 1:  # whole problems: both products on the cached block
                kb, kv, u, a, w_a = rows[0]
                self._scale(a, ops.matvec(kb, v, out=kv), t_a, w_a, out=u)
                ops.rmatvec(kb, u, out=ktu)
            else:
                ops.zero(ktu)
                for kb, kv, u, a, w_a in rows if forward else rows[::-1]:
                    self._scale(a, ops.matvec(kb, v, out=kv), t_a, w_a, out=u)
                    ops.rmatvec_add(kb, u, ktu, tmp)
            self._scale(b, ktu, t_b, w_b, out=v)
        self.forward = not forward
        return self.kv

    def _block_views(self) -> list:
        """Per group of the sweep: views of ``v``, ``Kt^T u``, scratch, ``b``, ``w_b`` and per
        row block of ``Kt``, ``Kt v``, ``u``, ``a``, ``w_a``."""
        p, K = self.p, self.kernel

        def part(x: Array | None, *index: Any) -> Array | None:
            return None if x is None else x[index]

        views = []
        for probs, rows in self.sweep:
            if probs.stop - probs.start == 1:  # one problem: plain matrices and vectors
                probs = probs.start
            row_views = [(K[probs, r], self.kv[probs, r], self.u[probs, r], p.a[probs, r],
                          part(self.w_a, probs, r)) for r in rows]
            views.append((self.v[probs], self.ktu[probs], self.tmp[probs], p.b[probs],
                          part(self.w_b, probs), row_views))
        return views

    def _monitored_round(self, it: int, start: tuple) -> bool:
        """A round that also measures the stopping criterion; True when every problem has
        converged. Balanced: the row-marginal error of the state ``start`` the round began
        from (snapshot of round ``it``), which is then the result; unbalanced: the change of
        ``log u`` over the round. The round itself is an ordinary (fused) one: the error uses
        the ``Kt v`` it computed on the way."""
        p, xp, tr = self.p, self.xp, self.tracker
        u_old, v_old = start[3], start[4]
        kv = self._round()
        if p.balanced:
            if tr.record(it, self._relative_row_error(u_old, kv)):
                ops = self.ops
                self.u, self.v = ops.snapshot(u_old), ops.snapshot(v_old)
                self._views = None
                return True
            return False
        residual = _max_abs_change(xp, safe_log(self.u, xp), safe_log(u_old, xp))
        return tr.record(it + 1, residual)

    def _relative_row_error(self, u: Array, kv: Array) -> np.ndarray:
        xp, a = self.xp, self.p.a
        return _to_host(xp.sum(xp.abs(u * kv - a), axis=-1) / xp.sum(a, axis=-1))

    def _final_error(self) -> np.ndarray:
        p, xp = self.p, self.xp
        kv = self.ops.matvec(self.kernel, self.v, out=self.kv)
        if p.balanced:
            return self._relative_row_error(self.u, kv)
        u_new = self._scale(p.a, kv, p.t_a, self.w_a, out=self.u_alt)
        return _max_abs_change(xp, safe_log(u_new, xp), safe_log(self.u, xp))

    def _healthy(self) -> bool:
        """Every scaling finite, and zero only where its marginal is (one host sync)."""
        xp, p, u, v = self.xp, self.p, self.u, self.v
        if not self.guarded:
            # u, v >= 0 by construction: "finite and not zero" is 0 < x < inf (False for NaN)
            return bool(xp.all((u > 0) & (u < math.inf)) & xp.all((v > 0) & (v < math.inf)))
        ok = xp.all(xp.isfinite(u)) & xp.all(xp.isfinite(v))
        ok = ok & ~xp.any((p.a > 0) & (u == 0)) & ~xp.any((p.b > 0) & (v == 0))
        return bool(ok)

    def _absorb_if_large(self) -> None:
        xp = self.xp
        lu, lv = safe_log(self.u, xp), safe_log(self.v, xp)
        big_u = xp.max(xp.abs(xp.where(self.u > 0, lu, xp.zeros_like(lu))))
        big_v = xp.max(xp.abs(xp.where(self.v > 0, lv, xp.zeros_like(lv))))
        if to_float(xp.maximum(big_u, big_v)) > self.absorb_at:
            self._absorb(self.phi + lu, self.gamma + lv)

    def _recover(self, good: tuple, max_iter: int) -> None:
        """Numerical trouble since the last check: return to the last healthy state.

        ``kernel`` stops there and says so; ``stabilized`` finishes in the log domain.
        """
        good_it, self.phi, self.gamma, self.u, self.v = good
        if not self.stabilized:
            self.stopped_at = good_it
            self.trouble = (
                f"The kernel-domain iteration left the floating-point range after round {good_it}"
                " and was stopped there (use domain='auto', 'stabilized' or 'log')."
            )
            self.tracker.stop_at(good_it, self._final_error)
            return
        phi, gamma = self.potentials()
        # the absorbed kernel is not needed any more: its buffer becomes the log loop's scratch
        work = self.kernel if self.ops.inplace else None
        log_loop = _LogLoop(self.p, phi, gamma, self.tol, self.check_every, start=good_it,
                            ops=self.ops, log_k=self.log_k, work=work)
        log_loop.tracker = self.tracker
        self.tracker.start = good_it
        log_loop.run(max_iter)
        self.phi, self.gamma = log_loop.potentials()
        self.u, self.v = self.xp.ones_like(self.phi), self.xp.ones_like(self.gamma)
        self.domain = "log"


class _Tracker:
    """Per-problem convergence bookkeeping on the host."""

    def __init__(self, batch: int, tol: float | None, start: int) -> None:
        self.tol, self.start = tol, start
        self.n_iter = np.full(batch, start, dtype=np.int64)
        self.error: np.ndarray | None = None
        self.done = np.zeros(batch, dtype=bool)

    def due(self, it: int, every: int) -> bool:
        """A check (health, absorption and, with a ``tol``, convergence) happens at round ``it``."""
        return it > self.start and (it - self.start) % every == 0

    def record(self, it: int, error: np.ndarray) -> bool:
        """Store the error after ``it`` rounds; True when every problem has converged."""
        self.error = np.where(self.done, self.error, error) if self.error is not None else error
        newly = (error <= self.tol) & ~self.done
        self.done |= newly
        self.n_iter[~self.done | newly] = it
        return bool(self.done.all())

    def finish(self, max_iter: int, final_error: Any) -> None:
        self.n_iter[~self.done] = max_iter
        if self.tol is not None and not self.done.all():
            err = final_error()
            self.error = err if self.error is None else np.where(self.done, self.error, err)

    def stop_at(self, it: int, final_error: Any) -> None:
        self.n_iter[~self.done] = it
        if self.tol is not None:
            err = final_error()
            self.error = err if self.error is None else np.where(self.done, self.error, err)


# --------------------------------------------------------------------------------------------
# helpers


def _transport(problem: Problem, phi: Array, gamma: Array, n_iter: np.ndarray,
               error: np.ndarray | None, tol: float | None, domain: str, *, warn: bool,
               trouble: str | None = None) -> Transport:
    f, g = phi * problem.eps, gamma * problem.eps
    if not problem.batched:
        f, g = f[0, ...], g[0, ...]
    n_it, err, conv = finish_diagnostics(n_iter, error, tol, problem.batched, warn=warn,
                                         domain=domain, trouble=trouble)
    # the result is a snapshot: later writes to the caller's arrays must not change its fields
    return Transport(f=f, g=g, n_iter=n_it, error=err, converged=conv, domain=domain,
                     problem=problem.snapshot())


def _dev(problem: Problem) -> Any:
    from otcl.backend import device_of

    return device_of(problem.cost)


def _log_kernel(problem: Problem, ops: ArrayOps, base2: bool = False) -> Array:
    """``-C / eps`` (``-inf`` on masked entries), into a fresh buffer when ``ops`` has them; with
    ``base2``, ``-LOG2E C / eps`` (base-2 units)."""
    if not ops.inplace:
        return problem.log_kernel()
    eps = problem.eps / LOG2E if base2 else problem.eps
    lk = ops.scaled(problem.cost, eps, out=ops.buffer(problem.shape, problem.cost))
    if problem.mask is not None:
        lk = ops.fill_where(lk, ~problem.mask, -math.inf)
    return lk


def _base2(problem: Problem, ops: ArrayOps, plain: bool) -> Base2 | None:
    """How the log loop holds its log-kernel: in base-2 units ``-LOG2E C / eps``, with the bound
    that lets the library raise the arguments below its ``exp2`` floor
    ([`Base2`][otcl.ops.base.Base2]), or ``None`` for natural units.

    Raising is allowed only on an unmasked problem with positive marginals (``plain``): no
    ``-inf`` argument, which must keep a zero power. Elsewhere a library whose ``exp2`` is slow
    below its floor ([`exp2_unraised_ok`][otcl.ops.base.ArrayOps.exp2_unraised_ok] False,
    NumPy) keeps natural units.
    """
    if ops.exp2_floor is None:
        return Base2(None)
    if not plain:
        return Base2(None) if ops.exp2_unraised_ok else None
    scale = LOG2E / to_float(problem.eps)
    return Base2(-_cost_bounds(problem)[1] * scale)


def _finite_exp(x: Array, xp: Any) -> Array:
    return xp.exp(xp.where(xp.isfinite(x), x, xp.zeros_like(x)))


def _row_error(xp: Any, phi: Array, lse: Array, a: Array) -> np.ndarray:
    mass = xp.exp(phi + lse)
    mass = xp.where(xp.isnan(mass), xp.zeros_like(mass), mass)
    return _to_host(xp.sum(xp.abs(mass - a), axis=-1) / xp.sum(a, axis=-1))


def _max_abs_change(xp: Any, new: Array, old: Array) -> np.ndarray:
    both = xp.isfinite(new) & xp.isfinite(old)
    diff = xp.where(both, xp.abs(new - old), xp.zeros_like(new))
    diff = xp.where((new == old) | both, diff, xp.full_like(diff, math.inf))
    return _to_host(xp.max(diff, axis=-1))


def _to_host(x: Array) -> np.ndarray:
    return np.asarray(to_numpy(x), dtype=np.float64)


def _cost_bounds(problem: Problem) -> tuple[Array, Array]:
    """Per-problem ``min C`` and ``max C`` over allowed entries, shapes ``(B,)`` (those of the
    validation when it kept them)."""
    if problem.cost_bounds is not None:
        return problem.cost_bounds
    xp = problem.xp
    c = problem.cost
    if problem.mask is None:
        return xp.min(c, axis=(1, 2)), xp.max(c, axis=(1, 2))
    lo = xp.min(xp.where(problem.mask, c, xp.full_like(c, math.inf)), axis=(1, 2))
    hi = xp.max(xp.where(problem.mask, c, xp.full_like(c, -math.inf)), axis=(1, 2))
    return lo, hi


def _as_batch_vec(x: Array, B: int, size: int, name: str) -> Array:
    shape = tuple(x.shape)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[-1] != size or x.shape[0] not in (1, B):
        raise ValueError(f"{name} has shape {shape}, expected ({size},) or ({B}, {size})")
    return x


def _validate_loop(max_iter: Any, tol: Any, check_every: Any) -> tuple[int, float | None, int]:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
            raise TypeError(f"tol must be a number or None (or 'auto'), got {tol!r}")
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be finite and >= 0 (or None), got {tol}")
        tol = float(tol)
    if isinstance(check_every, bool) or not isinstance(check_every, (int, np.integer)) or (
        check_every < 1
    ):
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    return int(max_iter), tol, int(check_every)


def _validate_init(init: Any, problem: Problem) -> tuple[Array, Array] | None:
    if init is None:
        return None
    if not isinstance(init, (tuple, list)) or len(init) != 2:
        raise TypeError("init must be a pair (f, g) of potentials")
    f, g = init
    check_compatible(cost=problem.cost, init_f=f, init_g=g)
    B, n, m = problem.shape
    xp = problem.xp
    f = xp.broadcast_to(_as_batch_vec(f, B, n, "init[0] (f)"), (B, n))
    g = xp.broadcast_to(_as_batch_vec(g, B, m, "init[1] (g)"), (B, m))
    # -inf is a valid potential (zero-mass entries); NaN and +inf are not
    if bool(xp.any(xp.isnan(f) | (f == math.inf))) or bool(xp.any(xp.isnan(g) | (g == math.inf))):
        raise ValueError("init contains NaN or +inf")
    return f, g
