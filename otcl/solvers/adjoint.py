r"""The inner solve of every GCA loss (fixed Sinkhorn rounds, then a row step) and its gradients.

The map. For a batch of log-kernels ``Λ = -C / eps`` of shape ``(B, n, m)`` (``-inf`` on masked
entries), log-marginals ``log a`` ``(B, n)``, ``log b`` ``(B, m)`` and update exponents
``t_a, t_b`` in ``(0, 1]`` (``t = rho / (rho + eps)``, ``1`` for a hard constraint)::

    gamma_0 = 0 (or a given init)
    for t = 1..L:  phi_t   = t_a (log a - r_t),  r_t = LSE_j(Λ_ij + gamma_{t-1,j})   (row step)
                   gamma_t = t_b (log b - c_t),  c_t = LSE_i(Λ_ij + phi_{t,i})       (column step)
    phi = phi_{L+1} = t_a (log a - LSE_j(Λ_ij + gamma_{L,j}))                   (final row step)
    gamma = gamma_L

``L = 0`` is the InfoNCE row projection. A row with ``a_i = 0`` gets ``phi_i = -inf`` (likewise
columns); a row whose every allowed entry meets a ``-inf`` potential has ``r_i = -inf`` and is
treated as ``r_i = 0`` (a constant), exactly as in [`otcl.solvers.sinkhorn`][otcl.solvers.sinkhorn].

In scaling form (``K = exp(Λ)``, ``u = exp(phi)``, ``v = exp(gamma)``) a round is
``u = (a / (K v))^t_a``, ``v = (b / (K^T u))^t_b``.

Forward domains. ``"kernel"`` computes every log-sum-exp as ``M + s + log(K' v')`` with
``K' = exp(Λ - M)`` and ``v' = exp(gamma - s)`` (``s`` the per-problem maximum of ``gamma``, so
``v' <= 1``): one matrix-vector product per step, and the potentials themselves stay in log form.
``M`` is the per-problem maximum of ``Λ`` (so ``K' <= 1``) when ``|max Λ|`` exceeds a quarter of
the dtype's exponent range (float32: 21.8, float64: 177), and ``0`` otherwise, which saves a pass
over the matrix in the common case; either way nothing can overflow. The only failure is loss of
precision when a normaliser ``K' v'`` is so small that terms below the dtype's ``tiny`` matter:
the forward tracks ``min K' v'`` over the active rows and columns and, at the end, checks
``K' v' >= max(n, m) tiny / eps_mach``, which bounds the relative error of every normaliser by
the machine epsilon. ``"auto"`` falls back to ``"log"`` (log-sum-exp over ``Λ``) when the check
fails. There are two host synchronisations, none inside the loop: one before it (the range of
``Λ`` and whether a marginal has a zero entry; without one, the steps run without guards) and the
precision check after it.

The tape. The kernel domain records ``K'`` once and, per step, three vectors: the scaling the
step read (``v'`` or ``u'``), its normaliser (``K' v'`` or ``K'^T u'``) and its output potential:
``3 (n + m)`` numbers per round, never an ``n x m`` matrix per round. The log domain records
per step the normaliser ``r_t`` / ``c_t`` and the output potential, and recomputes the step's
plan from ``Λ`` in the backward pass.

Unrolled gradient (``unroll``, exact derivative of the ``2L + 1`` steps). Write
``Prow_t = exp(Λ + gamma_{t-1} - r_t) = diag(1 / K v) K diag(v)`` (row-stochastic) and
``Pcol_t = exp(Λ + phi_t - c_t) = diag(u) K diag(1 / K^T u)`` (column-stochastic). Since
``d r_t = Prow_t ⊙ dΛ · 1 + Prow_t d gamma_{t-1}`` and ``d phi_t = t_a (d log a - d r_t)``,
the reverse pass of a row step with incoming cotangent ``phī_t`` is

    Λ̄         += -t_a diag(phī_t) Prow_t
    gammā_{t-1} += -t_a Prow_t^T phī_t       = -t_a v ⊙ K^T (phī_t / K v)
    log ā       +=  t_a phī_t,      t̄_a += <phī_t, phi_t> / t_a

and of a column step with incoming ``gammā_t``

    Λ̄      += -t_b Pcol_t diag(gammā_t)
    phī_t  += -t_b Pcol_t gammā_t           = -t_b u ⊙ K (gammā_t / K^T u)
    log b̄  +=  t_b gammā_t,     t̄_b += <gammā_t, gamma_t> / t_b.

The recursion starts from ``phī_{L+1} = phī`` (the output's cotangent) and
``gammā_L = gammā + (the final row step's contribution)``; ``phi_t`` for ``t <= L`` only feeds
column step ``t``. It runs on vectors (one matrix-vector product per step), and each step's
``Λ̄`` term is the rank-one matrix ``K ⊙ (α β^T)``: ``α = -t_a phī_t / K v``, ``β = v`` for a
row step, ``α = u``, ``β = -t_b gammā_t / K^T u`` for a column step. Stacking them as
``A (n, 2L+1)`` and ``B (m, 2L+1)`` gives ``Λ̄ = K' ⊙ (A B^T)``: one GEMM at the end, so the
backward pass costs about one forward pass. (The shifts ``M`` and ``s`` cancel inside
``Prow``/``Pcol``, so the same formula holds with ``K'``, ``u'``, ``v'``.)

Implicit gradient (``implicit``). At a fixed point of the Sinkhorn map,
``G(x, Λ) = (phi / t_a - log a + r(Λ, gamma), gamma / t_b - log b + c(Λ, phi)) = 0``. With
``P = exp(Λ + phi + gamma)``, ``μ = P 1`` and ``ν = P^T 1``, its Jacobian in
``x = (phi, gamma)`` is ``J = D^{-1} J̃`` with ``D = diag(μ, ν)`` and the symmetric

    J̃ = [[diag(μ) / t_a, P], [P^T, diag(ν) / t_b]].

The vector-Jacobian product is ``x̄^T dx = -w^T ∂G``, with ``J^T w = x̄``, i.e. ``w = D z`` and
``J̃ z = x̄``; then ``Λ̄ = -P ⊙ (z_1 1^T + 1 z_2^T)``, ``log ā = μ ⊙ z_1``,
``t̄_a = <μ ⊙ z_1, phi> / t_a^2`` (likewise for ``b``). Eliminating ``z_1`` leaves the Schur
complement ``S = diag(ν) / t_b - t_a P^T diag(1/μ) P`` (``m x m``), solved by conjugate gradients
on ``diag(ν)^{-1/2} S diag(ν)^{-1/2}`` (Jacobi-scaled; two matrix-vector products with ``P``
per iteration, ``O(n m)`` memory whatever the number of iterations). ``S`` is positive definite
unless ``t_a = t_b = 1``; in the balanced case it is positive semi-definite with the null vector
``1`` (the gauge ``(phi + c, gamma - c)``): the right-hand side is projected onto the complement
(exact for gauge-invariant losses, whose cotangents satisfy ``sum phī = sum gammā``; other
cotangents raise ``ValueError``, since the fixed point does not define their derivative) and the
iterates are kept there. The balanced marginal cotangents are then defined up to the same gauge
(``(log ā + c a, log b̄ - c b)``): only mass-preserving changes of ``(a, b)`` have a meaning there.

``detach`` needs nothing here: the caller treats ``phi`` and ``gamma`` as constants.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from otcl.backend import (
    Array,
    check_compatible,
    device_of,
    dtype_eps,
    dtype_tiny,
    host_matmul,
    is_array,
    logsumexp,
    quiet_numerics,
    to_numpy,
)
from otcl.ops import array_ops
from otcl.solvers.result import ConvergenceWarning

__all__ = [
    "GAUGE_RTOL_EPS",
    "INNER_DOMAINS",
    "Cotangents",
    "Tape",
    "fixed_round_potentials",
    "implicit_cotangents",
    "implicit_vjp",
    "require_gauge_invariant",
    "unrolled_cotangents",
    "unrolled_vjp",
]

INNER_DOMAINS = ("auto", "kernel", "log")


@dataclass(eq=False)
class Tape:
    """What the backward pass of the fixed-round solve needs (see the module docstring).

    Attributes
    ----------
    domain:
        ``"kernel"`` or ``"log"``: the domain the forward pass actually used.
    t_a, t_b, n_iter:
        The exponents and the number ``L`` of full rounds.
    log_a, log_b, init:
        The inputs ``log a`` ``(B, n)``, ``log b`` ``(B, m)`` and ``gamma_0`` ``(B, m)``
        (references, not copies).
    kernel:
        ``K' = exp(Λ - M)`` ``(B, n, m)`` in the kernel domain, else ``None``.
    log_kernel:
        ``Λ`` ``(B, n, m)`` in the log domain (a reference to the input), else ``None``.
    rows, cols:
        Per step records, ``L + 1`` row steps and ``L`` column steps. Kernel domain:
        ``(v', K' v', phi_t)`` and ``(u', K'^T u', gamma_t)``. Log domain: ``(r_t, phi_t)`` and
        ``(c_t, gamma_t)``. Empty when the forward ran with ``record=False``.
    recorded:
        Whether the per-step records were kept.
    exact:
        Kernel domain: every normaliser passed the precision check and no marginal has a zero
        entry, so the backward pass needs no guards.
    """

    xp: Any
    domain: str
    t_a: float
    t_b: float
    n_iter: int
    log_a: Array
    log_b: Array
    init: Array
    kernel: Array | None
    log_kernel: Array | None
    rows: list[tuple[Array, ...]] = field(default_factory=list)
    cols: list[tuple[Array, ...]] = field(default_factory=list)
    recorded: bool = True
    exact: bool = False

    def step_arrays(self) -> Iterator[Array]:
        """Every array the per-step records hold (distinct objects, each once)."""
        seen: set[int] = set()
        for rec in (*self.rows, *self.cols):
            for x in rec:
                if id(x) not in seen:
                    seen.add(id(x))
                    yield x

    @property
    def step_nbytes(self) -> int:
        """Bytes held by the per-step records (``O(L (n + m))`` per problem)."""
        return sum(_nbytes(x, self.xp) for x in self.step_arrays())

    @property
    def matrix_nbytes(self) -> int:
        """Bytes of the one ``(B, n, m)`` array the tape holds (``K'`` or ``Λ``)."""
        mat = self.kernel if self.kernel is not None else self.log_kernel
        return 0 if mat is None else _nbytes(mat, self.xp)


@dataclass(eq=False)
class Cotangents:
    """Vector-Jacobian products of the inner solve, one per input.

    ``log_kernel`` ``(B, n, m)``, ``log_a`` ``(B, n)``, ``log_b`` ``(B, m)``, ``t_a`` and ``t_b``
    0-d arrays (summed over the batch, since the exponents are shared), ``init`` ``(B, m)`` (the
    cotangent of ``gamma_0``; ``None`` for the implicit derivative, which does not depend on it).
    """

    log_kernel: Array
    log_a: Array
    log_b: Array
    t_a: Array
    t_b: Array
    init: Array | None


# --------------------------------------------------------------------------------------------
# forward


def fixed_round_potentials(
    log_kernel: Array,
    log_a: Array,
    log_b: Array,
    t_a: float,
    t_b: float,
    n_iter: int,
    *,
    domain: str = "auto",
    init: Array | None = None,
    record: bool = True,
) -> tuple[Array, Array, Tape]:
    """``L = n_iter`` Sinkhorn rounds on ``Λ = log_kernel``, then a final row step.

    Parameters
    ----------
    log_kernel:
        ``Λ`` of shape ``(B, n, m)``, real floating; finite or ``-inf`` (masked) entries, at
        least one finite entry in every row with ``a_i > 0`` and column with ``b_j > 0``.
    log_a, log_b:
        ``log a`` ``(B, n)`` and ``log b`` ``(B, m)`` (``-inf`` for zero mass).
    t_a, t_b:
        Update exponents in ``(0, 1]``: ``rho / (rho + eps)``, ``1`` for a hard constraint.
    n_iter:
        ``L >= 0``, the number of full rounds before the final row step.
    domain:
        ``"auto"`` (kernel domain, falling back to log when its precision check fails),
        ``"kernel"`` or ``"log"``.
    init:
        ``gamma_0`` of shape ``(B, m)`` (default zeros).
    record:
        Keep the per-step records needed by [`unrolled_vjp`][otcl.solvers.adjoint.unrolled_vjp]
        (``O(L (n + m))`` memory).

    Returns
    -------
    phi, gamma, tape
        ``phi = phi_{L+1}`` ``(B, n)``, ``gamma = gamma_L`` ``(B, m)`` (scaled potentials, the plan
        is ``exp(phi_i + gamma_j + Λ_ij)``) and the [`Tape`][otcl.solvers.adjoint.Tape] for the
        backward pass.
    """
    xp, t_a, t_b, n_iter, init = _validate(
        log_kernel, log_a, log_b, t_a, t_b, n_iter, domain, init
    )
    with quiet_numerics(xp):
        if domain in ("auto", "kernel"):
            phi, gamma, tape, precise = _forward_kernel(
                xp, log_kernel, log_a, log_b, t_a, t_b, n_iter, init, record
            )
            if precise:
                return phi, gamma, tape
            if domain == "kernel":
                warnings.warn(
                    "kernel-domain products fell below the precision threshold of the dtype "
                    "(a normaliser K v under max(n, m) * tiny / eps); the potentials may be "
                    "inaccurate. Use domain='auto' or 'log'.",
                    ConvergenceWarning,
                    stacklevel=2,
                )
                return phi, gamma, tape
        return _forward_log(xp, log_kernel, log_a, log_b, t_a, t_b, n_iter, init, record)


def _forward_kernel(
    xp: Any, log_kernel: Array, log_a: Array, log_b: Array, t_a: float, t_b: float, L: int,
    init: Array, record: bool,
) -> tuple[Array, Array, Tape, bool]:
    n, m = log_kernel.shape[1:]
    dtype = log_kernel.dtype
    fin_a, fin_b = log_a > -math.inf, log_b > -math.inf
    peak = xp.max(log_kernel, axis=(1, 2))  # (B,)
    # The one host synchronisation before the loop: the range of Λ and whether any mass is 0.
    stats = to_numpy(xp.stack([
        xp.max(xp.abs(peak)),
        xp.astype(xp.all(fin_a) & xp.all(fin_b), dtype),
    ]))
    # K' goes into a buffer of the library's buffered operations where there is one (NumPy,
    # PyTorch CPU: a pooled buffer, no fresh pages when the loss is called again), written block
    # by block
    ops = array_ops(xp, log_kernel)
    if float(stats[0]) <= 0.25 * -math.log(dtype_tiny(xp, dtype)):
        shift = None  # exp(Λ) and K v stay in range without a shift
        kernel = ops.exp_shifted(log_kernel, None, None)
    else:
        shift = xp.where(peak > -math.inf, peak, xp.zeros_like(peak))[:, None]  # (B, 1)
        row_shift = xp.broadcast_to(-shift, tuple(log_kernel.shape[:2]))
        kernel = ops.exp_shifted(log_kernel, row_shift, None)
    full = bool(stats[1] == 1.0)  # no zero mass: the steps need no guards
    floor = max(n, m) * dtype_tiny(xp, dtype) / dtype_eps(xp, dtype)
    low = xp.full((log_kernel.shape[0],), math.inf, dtype=dtype, device=device_of(log_kernel))
    tape = Tape(xp, "kernel", t_a, t_b, L, log_a, log_b, init, kernel, None, recorded=record)

    def step(x: Array, log_m: Array, fin: Array, t: float, row: bool) -> tuple[Array, Array]:
        nonlocal low
        s = xp.max(x, axis=1, keepdims=True)
        if not full:
            s = xp.where(s > -math.inf, s, xp.zeros_like(s))
        scaling = xp.exp(x - s)
        norm = _matvec(xp, kernel, scaling) if row else _rmatvec(xp, kernel, scaling)
        off = s if shift is None else s + shift
        if full:
            out = log_m - xp.log(norm) - off
            out = out if t == 1.0 else t * out
            low = xp.minimum(low, xp.min(norm, axis=1))
        else:
            out = _update(log_m, xp.log(norm) + off, t, xp)
            low = xp.minimum(low, xp.min(xp.where(fin, norm, xp.full_like(norm, math.inf)),
                                         axis=1))
        if record:
            (tape.rows if row else tape.cols).append((scaling, norm, out))
        return out

    gamma = init
    for _ in range(L):
        phi = step(gamma, log_a, fin_a, t_a, True)
        gamma = step(phi, log_b, fin_b, t_b, False)
    phi = step(gamma, log_a, fin_a, t_a, True)
    precise = bool(xp.all(low >= floor))
    tape.exact = precise and full
    return phi, gamma, tape, precise


def _forward_log(
    xp: Any, log_kernel: Array, log_a: Array, log_b: Array, t_a: float, t_b: float, L: int,
    init: Array, record: bool,
) -> tuple[Array, Array, Tape]:
    tape = Tape(xp, "log", t_a, t_b, L, log_a, log_b, init, None, log_kernel, recorded=record)

    def row(gamma: Array) -> Array:
        lse = logsumexp(log_kernel + gamma[:, None, :], 2, xp)
        phi = _update(log_a, lse, t_a, xp)
        if record:
            tape.rows.append((lse, phi))
        return phi

    def col(phi: Array) -> Array:
        lse = logsumexp(log_kernel + phi[:, :, None], 1, xp)
        gamma = _update(log_b, lse, t_b, xp)
        if record:
            tape.cols.append((lse, gamma))
        return gamma

    gamma = init
    for _ in range(L):
        gamma = col(row(gamma))
    return row(gamma), gamma, tape


# --------------------------------------------------------------------------------------------
# unrolled backward


def unrolled_vjp(tape: Tape, phi_bar: Array | None, gamma_bar: Array | None) -> Array:
    """``Λ̄`` ``(B, n, m)``: the exact vector-Jacobian product of the ``L`` rounds (unroll).

    ``phi_bar`` ``(B, n)`` and ``gamma_bar`` ``(B, m)`` are the cotangents of the outputs
    (``None`` = zero). See the module docstring for the adjoint recursion; in the kernel domain
    it costs ``2L + 1`` matrix-vector products and one rank-``(2L + 1)`` product.
    """
    return unrolled_cotangents(tape, phi_bar, gamma_bar).log_kernel


def unrolled_cotangents(tape: Tape, phi_bar: Array | None, gamma_bar: Array | None) -> Cotangents:
    """All vector-Jacobian products of the unrolled solve (``Λ``, ``log a``, ``log b``, ``t``,
    ``gamma_0``); see [`unrolled_vjp`][otcl.solvers.adjoint.unrolled_vjp]."""
    if not isinstance(tape, Tape):
        raise TypeError(f"tape must be a Tape, got {type(tape).__name__}")
    if not tape.recorded:
        raise ValueError("tape was recorded with record=False: the unrolled derivative needs it")
    xp = tape.xp
    phi_bar, gamma_bar = _cotangent_pair(tape, phi_bar, gamma_bar)
    with quiet_numerics(xp):
        if tape.domain == "kernel":
            return _vjp_kernel(tape, phi_bar, gamma_bar)
        return _vjp_log(tape, phi_bar, gamma_bar)


def _marginal_cotangents(
    xp: Any, log_m: Array, t: float, cots: list[Array], pots: list[Array], guard: bool
) -> tuple[Array, Array]:
    """``log m̄ = t sum_t cot_t`` and ``t̄ = sum_t <cot_t, pot_t> / t`` over one side's steps
    (rows where ``log m = -inf`` excluded when ``guard``)."""
    cot, pot = xp.stack(cots, axis=2), xp.stack(pots, axis=2)  # (B, size, steps)
    if guard:
        fin = (log_m > -math.inf)[:, :, None]
        cot = xp.where(fin, cot, xp.zeros_like(cot))
        pot = xp.where(fin, pot, xp.zeros_like(pot))
    return t * xp.sum(cot, axis=2), xp.sum(cot * pot) / t


def _vjp_kernel(tape: Tape, phi_bar: Array, gamma_bar: Array) -> Cotangents:
    xp, K, L = tape.xp, tape.kernel, tape.n_iter
    t_a, t_b = tape.t_a, tape.t_b
    guard = not tape.exact
    fin_a, fin_b = tape.log_a > -math.inf, tape.log_b > -math.inf
    alphas: list[Array] = []  # (B, n) each
    betas: list[Array] = []  # (B, m) each
    cot_a: list[Array] = []
    cot_b: list[Array] = []

    def ratio(num: Array, den: Array, fin: Array) -> Array:
        if not guard:
            return num / den
        active = fin & (den > 0)
        return xp.where(active, num / xp.where(active, den, xp.ones_like(den)),
                        xp.zeros_like(den))

    def row_back(t: int, pbar: Array) -> Array:
        v, kv, _ = tape.rows[t]
        w = ratio(pbar, kv, fin_a)
        alphas.append(-t_a * w)
        betas.append(v)
        cot_a.append(pbar)
        return (-t_a) * v * _rmatvec(xp, K, w)

    def col_back(t: int, gbar: Array) -> Array:
        u, ktu, _ = tape.cols[t]
        w = ratio(gbar, ktu, fin_b)
        alphas.append(u)
        betas.append(-t_b * w)
        cot_b.append(gbar)
        return (-t_b) * u * _matvec(xp, K, w)

    gbar = gamma_bar + row_back(L, phi_bar)
    for t in range(L - 1, -1, -1):
        gbar = row_back(t, col_back(t, gbar))
    ops = array_ops(xp, K)
    left, right = xp.stack(alphas, axis=2), xp.stack(betas, axis=1)  # (B, n, 2L+1), (B, 2L+1, m)
    lam_bar = host_matmul(left, right, xp, out=ops.buffer(tuple(K.shape), K))
    lam_bar = ops.multiply(lam_bar, K, out=lam_bar if ops.inplace else None)
    return _assemble(xp, tape, lam_bar, cot_a, cot_b, gbar, guard)


def _assemble(xp: Any, tape: Tape, lam_bar: Array, cot_a: list[Array], cot_b: list[Array],
              init_bar: Array, guard: bool) -> Cotangents:
    """Cotangents from the per-step ones; ``cot_a``/``cot_b`` run backwards in time."""
    L = tape.n_iter
    phis = [tape.rows[t][-1] for t in range(L, -1, -1)]
    gammas = [tape.cols[t][-1] for t in range(L - 1, -1, -1)]
    la_bar, ta_bar = _marginal_cotangents(xp, tape.log_a, tape.t_a, cot_a, phis, guard)
    if L:
        lb_bar, tb_bar = _marginal_cotangents(xp, tape.log_b, tape.t_b, cot_b, gammas, guard)
    else:
        lb_bar, tb_bar = xp.zeros_like(tape.log_b), xp.sum(xp.zeros_like(tape.log_b))
    return Cotangents(lam_bar, la_bar, lb_bar, ta_bar, tb_bar, init_bar)


def _vjp_log(tape: Tape, phi_bar: Array, gamma_bar: Array) -> Cotangents:
    xp, lk, L = tape.xp, tape.log_kernel, tape.n_iter
    t_a, t_b = tape.t_a, tape.t_b
    fin_a, fin_b = tape.log_a > -math.inf, tape.log_b > -math.inf
    lam_bar = xp.zeros_like(lk)
    cot_a: list[Array] = []
    cot_b: list[Array] = []

    def row_back(t: int, pbar: Array) -> Array:
        nonlocal lam_bar
        lse, _ = tape.rows[t]
        gamma_prev = tape.init if t == 0 else tape.cols[t - 1][1]
        has = lse > -math.inf
        w = xp.where(fin_a & has, pbar, xp.zeros_like(pbar))
        lse = xp.where(has, lse, xp.zeros_like(lse))
        q = w[:, :, None] * xp.exp(lk + gamma_prev[:, None, :] - lse[:, :, None])
        lam_bar -= t_a * q
        cot_a.append(pbar)
        return -t_a * xp.sum(q, axis=1)

    def col_back(t: int, gbar: Array) -> Array:
        nonlocal lam_bar
        lse, _ = tape.cols[t]
        phi = tape.rows[t][1]
        has = lse > -math.inf
        w = xp.where(fin_b & has, gbar, xp.zeros_like(gbar))
        lse = xp.where(has, lse, xp.zeros_like(lse))
        q = w[:, None, :] * xp.exp(lk + phi[:, :, None] - lse[:, None, :])
        lam_bar -= t_b * q
        cot_b.append(gbar)
        return -t_b * xp.sum(q, axis=2)

    gbar = gamma_bar + row_back(L, phi_bar)
    for t in range(L - 1, -1, -1):
        gbar = row_back(t, col_back(t, gbar))
    return _assemble(xp, tape, lam_bar, cot_a, cot_b, gbar, True)


# --------------------------------------------------------------------------------------------
# implicit backward


def implicit_vjp(
    log_kernel: Array,
    phi: Array,
    gamma: Array,
    log_a: Array,
    log_b: Array,
    t_a: float,
    t_b: float,
    phi_bar: Array | None,
    gamma_bar: Array | None,
    *,
    tol: float | None = None,
    max_iter: int = 1000,
) -> Array:
    """``Λ̄`` ``(B, n, m)``: the implicit-function derivative at the fixed point ``(phi, gamma)``.

    Solves the adjoint system by conjugate gradients on the Jacobi-scaled Schur complement (module
    docstring), with matrix-vector products only. ``tol`` is the relative residual (default ``0.01
    sqrt(eps_mach)``: 1.5e-10 in float64, 3.5e-6 in float32); a problem that does not reach it in
    ``max_iter`` iterations emits a [`ConvergenceWarning`][otcl.ConvergenceWarning]. On a balanced
    problem (``t_a = t_b = 1``) cotangents that are not gauge-invariant raise ``ValueError``
    ([`require_gauge_invariant`][otcl.solvers.adjoint.require_gauge_invariant]).
    """
    return implicit_cotangents(
        log_kernel, phi, gamma, log_a, log_b, t_a, t_b, phi_bar, gamma_bar, tol=tol,
        max_iter=max_iter,
    ).log_kernel


def implicit_cotangents(
    log_kernel: Array,
    phi: Array,
    gamma: Array,
    log_a: Array,
    log_b: Array,
    t_a: float,
    t_b: float,
    phi_bar: Array | None,
    gamma_bar: Array | None,
    *,
    tol: float | None = None,
    max_iter: int = 1000,
    check_every: int = 10,
) -> Cotangents:
    """All implicit vector-Jacobian products (``Λ``, ``log a``, ``log b``, ``t``); see
    [`implicit_vjp`][otcl.solvers.adjoint.implicit_vjp]. ``init`` is ``None``: the fixed point does
    not depend on it."""
    xp, t_a, t_b, _, _ = _validate(log_kernel, log_a, log_b, t_a, t_b, 0, "auto", None)
    B, n, m = log_kernel.shape
    check_compatible(log_kernel=log_kernel, phi=phi, gamma=gamma)
    _check_shape("phi", phi, (B, n))
    _check_shape("gamma", gamma, (B, m))
    if tol is None:
        tol = 0.01 * math.sqrt(dtype_eps(xp, log_kernel.dtype))
    elif isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if (isinstance(max_iter, bool) or not hasattr(max_iter, "__index__")
            or operator.index(max_iter) < 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    max_iter = operator.index(max_iter)
    tape = Tape(xp, "log", t_a, t_b, 0, log_a, log_b, gamma, None, log_kernel)
    phi_bar, gamma_bar = _cotangent_pair(tape, phi_bar, gamma_bar)
    with quiet_numerics(xp):
        return _implicit(xp, log_kernel, phi, gamma, log_a, log_b, t_a, t_b, phi_bar, gamma_bar,
                         float(tol), max_iter, check_every)


def _implicit(
    xp: Any, lk: Array, phi: Array, gamma: Array, log_a: Array, log_b: Array, t_a: float,
    t_b: float, phi_bar: Array, gamma_bar: Array, tol: float, max_iter: int, check_every: int,
) -> Cotangents:
    plan = xp.exp(lk + phi[:, :, None] + gamma[:, None, :])
    mu, nu = xp.sum(plan, axis=2), xp.sum(plan, axis=1)
    zero_n, zero_m = xp.zeros_like(mu), xp.zeros_like(nu)
    act_r = (mu > 0) & (log_a > -math.inf)
    act_c = (nu > 0) & (log_b > -math.inf)
    inv_mu = xp.where(act_r, 1.0 / xp.where(act_r, mu, xp.ones_like(mu)), zero_n)
    root_nu = xp.where(act_c, xp.sqrt(nu), zero_m)
    inv_root_nu = xp.where(act_c, 1.0 / xp.where(act_c, root_nu, xp.ones_like(nu)), zero_m)
    pb = xp.where(act_r, phi_bar, zero_n)
    gb = xp.where(act_c, gamma_bar, zero_m)
    balanced = t_a == 1.0 and t_b == 1.0
    if balanced:
        _check_gauge_invariant(xp, pb, gb, lk.dtype)
    mass = xp.sum(nu, axis=1, keepdims=True)

    def project(y: Array) -> Array:
        if not balanced:
            return y
        return y - (xp.sum(root_nu * y, axis=1, keepdims=True) / mass) * root_nu

    def op(y: Array) -> Array:
        x = y * inv_root_nu
        inner = _rmatvec(xp, plan, inv_mu * _matvec(xp, plan, x))
        out = y / t_b - t_a * inv_root_nu * inner
        return project(xp.where(act_c, out, y))

    rhs = project((gb - t_a * _rmatvec(xp, plan, pb * inv_mu)) * inv_root_nu)
    y = _cg(xp, op, rhs, tol, max_iter, check_every)
    z2 = y * inv_root_nu
    z1 = t_a * inv_mu * (pb - _matvec(xp, plan, z2))
    lam_bar = -plan * (z1[:, :, None] + z2[:, None, :])
    w1, w2 = mu * z1, nu * z2
    phi_f = xp.where(act_r, phi, zero_n)
    gamma_f = xp.where(act_c, gamma, zero_m)
    ta_bar = xp.sum(w1 * phi_f) / (t_a * t_a)
    tb_bar = xp.sum(w2 * gamma_f) / (t_b * t_b)
    return Cotangents(lam_bar, w1, w2, ta_bar, tb_bar, None)


GAUGE_RTOL_EPS = 1000
"""A balanced problem's cotangents count as gauge-invariant when ``|sum phī - sum gammā|`` is at
most this many machine epsilons of ``sum |phī| + sum |gammā|`` (a gauge-invariant loss gives 0
or rounding; the RINCE terms of a balanced plan gave 1e-3 to 0.5)."""


def _check_gauge_invariant(xp: Any, phi_bar: Array, gamma_bar: Array, dtype: Any) -> None:
    """Raise ``ValueError`` if the cotangents ``phī (B, n)``, ``gammā (B, m)`` of a balanced
    problem are not gauge-invariant (``sum phī != sum gammā``;
    [`require_gauge_invariant`][otcl.solvers.adjoint.require_gauge_invariant])."""
    gap = xp.abs(xp.sum(phi_bar, axis=1) - xp.sum(gamma_bar, axis=1))
    scale = xp.sum(xp.abs(phi_bar), axis=1) + xp.sum(xp.abs(gamma_bar), axis=1)
    rel = to_numpy(gap / xp.where(scale > 0, scale, xp.ones_like(scale)))
    require_gauge_invariant(float(rel.max()) if rel.size else 0.0, dtype_eps(xp, dtype))


def require_gauge_invariant(rel_gap: float, machine_eps: float) -> None:
    """Raise ``ValueError`` unless a balanced problem's cotangents are gauge-invariant:
    ``rel_gap = |sum phī - sum gammā| / (sum |phī| + sum |gammā|)`` at most
    [`GAUGE_RTOL_EPS`][otcl.solvers.adjoint.GAUGE_RTOL_EPS] times ``machine_eps``.

    The balanced fixed points form the line ``(phi + c, gamma - c)``: a loss that reads the gauge
    (the RINCE terms read ``(K v)_i``) depends on where along it the rounds stopped, which only
    the rounds themselves decide. The fixed-point equations say nothing of it, so the implicit
    derivative of such a loss is not defined; ``unroll`` is."""
    # non-finite cotangents are the non-finite-gradient diagnostic's to report
    if math.isfinite(rel_gap) and rel_gap > GAUGE_RTOL_EPS * machine_eps:
        raise ValueError(
            "grad='implicit' is not defined for this loss: on a balanced problem it reads the "
            "potentials' gauge (phi + c, gamma - c), which the fixed point leaves free and only "
            f"the rounds fix (sum of phi's cotangent minus gamma's: {rel_gap:.2g} of their size; "
            "the RINCE terms of GCA-RINCE and of a balanced GCA-UOT read (K v)_i). "
            "Use grad='unroll', the exact derivative of the rounds."
        )


def _cg(xp: Any, op: Any, rhs: Array, tol: float, max_iter: int, check_every: int) -> Array:
    """Batched conjugate gradients for ``op(y) = rhs`` (``op`` symmetric positive (semi-)
    definite on the range the right-hand side lives in), rows = problems."""
    y = xp.zeros_like(rhs)
    r = rhs
    p = r
    rs = xp.sum(r * r, axis=1)
    target = (tol * tol) * rs
    done = rs <= target
    for k in range(max_iter):
        q = op(p)
        pq = xp.sum(p * q, axis=1)
        step = xp.where(~done & (pq > 0), rs / xp.where(pq > 0, pq, xp.ones_like(pq)),
                        xp.zeros_like(pq))
        y = y + step[:, None] * p
        r = r - step[:, None] * q
        rs_new = xp.sum(r * r, axis=1)
        beta = xp.where(rs > 0, rs_new / xp.where(rs > 0, rs, xp.ones_like(rs)),
                        xp.zeros_like(rs))
        p = r + beta[:, None] * p
        rs = rs_new
        done = done | (rs <= target)
        if (k + 1) % check_every == 0 and bool(xp.all(done)):
            break
    residual = rhs - op(y)
    res = xp.sum(residual * residual, axis=1)
    bad = ~(res <= (4 * tol * tol) * xp.sum(rhs * rhs, axis=1))
    n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
    if n_bad:
        worst = float(xp.max(xp.sqrt(res / xp.where(bad, xp.sum(rhs * rhs, axis=1),
                                                      xp.ones_like(res)))))
        warnings.warn(
            f"implicit gradient: conjugate gradients did not reach the relative residual "
            f"{tol:.3g} in {max_iter} iterations for {n_bad} of {rhs.shape[0]} problem(s) "
            f"(largest {worst:.3g}); the gradient is inaccurate. Raise max_iter or use "
            "grad='unroll'.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return y


# --------------------------------------------------------------------------------------------
# helpers


def _update(log_m: Array, lse: Array, t: float, xp: Any) -> Array:
    """``t (log m - lse)``; ``lse = -inf`` is read as 0 and zero mass gives ``-inf``."""
    raw = log_m - xp.where(lse > -math.inf, lse, xp.zeros_like(lse))
    out = raw if t == 1.0 else t * raw
    return xp.where(log_m > -math.inf, out, xp.full_like(out, -math.inf))


def _finite_max(x: Array, xp: Any, axis: Any) -> Array:
    """Maximum over ``axis``, 0 where every entry is ``-inf``."""
    mx = xp.max(x, axis=axis)
    return xp.where(mx > -math.inf, mx, xp.zeros_like(mx))


def _matvec(xp: Any, kernel: Array, v: Array) -> Array:
    """``K v`` for ``K (B, n, m)``, ``v (B, m)``; a plain matrix-vector product when ``B = 1``
    (a batched product of one matrix with an ``(m, 1)`` column is slower in several libraries),
    through [`otcl.backend.host_matmul`][otcl.backend.host_matmul]."""
    if kernel.shape[0] == 1:
        return host_matmul(kernel[0, ...], v[0, ...], xp)[None, ...]
    return host_matmul(kernel, v[:, :, None], xp)[:, :, 0]


def _rmatvec(xp: Any, kernel: Array, u: Array) -> Array:
    """``K^T u`` for ``K (B, n, m)``, ``u (B, n)`` (plain vector-matrix product when ``B = 1``)."""
    if kernel.shape[0] == 1:
        return host_matmul(u[0, ...], kernel[0, ...], xp)[None, ...]
    return host_matmul(u[:, None, :], kernel, xp)[:, 0, :]


def _nbytes(x: Array, xp: Any) -> int:
    size = math.prod(x.shape)
    bits = xp.finfo(x.dtype).bits if xp.isdtype(x.dtype, "real floating") else 8
    return size * bits // 8


def _check_shape(name: str, x: Array, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}")


def _exponent(name: str, t: Any) -> float:
    scalar = is_array(t) and getattr(t, "ndim", None) == 0
    if isinstance(t, bool) or not (isinstance(t, numbers.Real) or scalar):
        raise TypeError(f"{name} must be a real number in (0, 1], got {type(t).__name__}")
    value = float(t)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


def _validate(
    log_kernel: Array, log_a: Array, log_b: Array, t_a: Any, t_b: Any, n_iter: Any, domain: str,
    init: Array | None,
) -> tuple[Any, float, float, int, Array]:
    xp = check_compatible(log_kernel=log_kernel, log_a=log_a, log_b=log_b, init=init)
    if log_kernel.ndim != 3:
        raise ValueError(
            f"log_kernel must have shape (B, n, m), got {tuple(log_kernel.shape)}"
        )
    B, n, m = log_kernel.shape
    if B == 0 or n == 0 or m == 0:
        raise ValueError(f"log_kernel must not be empty, got shape {tuple(log_kernel.shape)}")
    _check_shape("log_a", log_a, (B, n))
    _check_shape("log_b", log_b, (B, m))
    if init is None:
        init = xp.zeros((B, m), dtype=log_kernel.dtype, device=device_of(log_kernel))
    else:
        _check_shape("init", init, (B, m))
    if isinstance(n_iter, bool) or not hasattr(n_iter, "__index__") or operator.index(n_iter) < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    if domain not in INNER_DOMAINS:
        raise ValueError(f"domain must be one of {INNER_DOMAINS}, got {domain!r}")
    return xp, _exponent("t_a", t_a), _exponent("t_b", t_b), operator.index(n_iter), init


def _cotangent_pair(
    tape: Tape, phi_bar: Array | None, gamma_bar: Array | None
) -> tuple[Array, Array]:
    xp = tape.xp
    if phi_bar is None:
        phi_bar = xp.zeros_like(tape.log_a)
    else:
        check_compatible(log_a=tape.log_a, phi_bar=phi_bar)
        _check_shape("phi_bar", phi_bar, tuple(tape.log_a.shape))
    if gamma_bar is None:
        gamma_bar = xp.zeros_like(tape.log_b)
    else:
        check_compatible(log_b=tape.log_b, gamma_bar=gamma_bar)
        _check_shape("gamma_bar", gamma_bar, tuple(tape.log_b.shape))
    return phi_bar, gamma_bar
