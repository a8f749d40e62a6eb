"""The steps of every serial sampler as per-step coefficient tables on a grid of noise levels.

Every family writes the sampler's state as ``x = alpha_k x0 + sigma_k eps`` at grid level
``k`` (``k = 0 .. N``; level ``k`` is the state before step ``k``). A step evaluates the
model once at level ``j`` (giving the prediction ``(x0, eps)``) and forms the next state as
a fixed linear combination

    ``state_{j+1}[s] = sum_i C_j[s, i] * u_i``,   ``u = (state_j[0 .. S-1], x0, eps, z_j)``

where ``S`` is the number of state *slots*: slot 0 is the sample ``x``; multistep solvers
keep their history (earlier ``x0`` predictions, UniPC's corrected previous sample) in the
further slots, so the step is a deterministic map of the whole state and Parareal and the
window samplers stay exact (see ``docs/theory``). ``z_j`` is the step's pre-drawn noise
(ancestral samplers). The tables ``C_j`` are float64 and depend only on the grid.

Solvers: ``"ddim"`` (with ``eta``) and ``"ddpm"`` on a :class:`VPSchedule`; on a
:class:`SigmaSchedule` ``"euler"`` (= DDIM, flow-matching Euler and EDM Euler: one
first-order step), ``"euler_ancestral"``, ``"dpmpp_2m"`` (DPM-Solver++ 2M, midpoint or heun
variant) and ``"unipc"`` (UniPC bh1/bh2 with its corrector), each written as diffusers
writes it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .schedule import SigmaSchedule, VPSchedule, check_num_steps

#: the slots of the state for each solver: ``"x"`` is a sample at a grid level, ``"x0"`` a
#: data prediction (history of multistep solvers)
SLOTS = {"ddim": ("x",), "ddpm": ("x",), "euler": ("x",), "euler_ancestral": ("x",),
         "dpmpp_2m": ("x", "x0"), "unipc": ("x", "x", "x0", "x0")}


@dataclass
class SamplingGrid:
    """The per-step tables of an ``N``-step sampler on a schedule (all float64 on the CPU).

    Attributes:
        timesteps: the model's timestep value at each step ``[N]`` (int64 for DDIM/DDPM and
            the discrete diffusers grids, float for flow matching and Karras grids).
        alpha_from, sigma_from: the state's level before each step ``[N]``
            (``x = alpha x0 + sigma eps``); ``alpha_to``, ``sigma_to``: after it ``[N]``
            (the next step's level, except where DDIM's spacing skips).
        c_in: the model's input scale per step ``[N]`` (the scheduler's ``scale_model_input``).
        coef: ``[N, S, S + 3]``: the step's coefficients on ``(slots, x0, eps, z)``.
        solver: the solver's name; ``slots``: the kind of each state slot.
        init_noise_sigma: ``x_T`` (standard normal) is multiplied by it first.
    """

    timesteps: Tensor
    alpha_from: Tensor
    sigma_from: Tensor
    alpha_to: Tensor
    sigma_to: Tensor
    c_in: Tensor
    coef: Tensor
    solver: str
    slots: tuple[str, ...] = ("x",)
    init_noise_sigma: float = 1.0

    # ------------------------------------------------------------------ derived
    @property
    def num_steps(self) -> int:
        """``N``, the sampler's steps."""
        return self.timesteps.numel()

    @property
    def num_slots(self) -> int:
        """``S``: 1 for one-step solvers, more where the state carries history."""
        return len(self.slots)

    @property
    def noise_scale(self) -> Tensor:
        """The weight of the step's noise ``z_j`` on the sample ``[N]``."""
        return self.coef[:, 0, -1]

    @property
    def stochastic(self) -> bool:
        """Whether any step adds noise (DDIM with ``eta > 0``, DDPM, ancestral)."""
        return bool((self.noise_scale != 0).any())

    @property
    def alpha_in(self) -> Tensor:
        """The variance-preserving ``alpha_bar`` before each step ``[N]`` (the same
        signal-to-noise ratio as the state's ``(alpha, sigma)``)."""
        return _alpha_bar(self.alpha_from, self.sigma_from)

    @property
    def alpha_out(self) -> Tensor:
        """``alpha_bar`` after each step ``[N]``."""
        return _alpha_bar(self.alpha_to, self.sigma_to)

    @property
    def c_x0(self) -> Tensor:
        """One-step solvers: the weight of ``x0`` in each step ``[N]``."""
        return self.coef[:, 0, self.num_slots]

    @property
    def c_eps(self) -> Tensor:
        """One-step solvers: the weight of ``eps`` in each step ``[N]``."""
        return self.coef[:, 0, self.num_slots + 1]

    @property
    def c_x(self) -> Tensor:
        """The weight of the input sample in each step ``[N]``."""
        return self.coef[:, 0, 0]

    def step_noise_var(self) -> Tensor:
        """The DDPM posterior variance of each step in the state's units ``[N]`` (never
        below 1e-8): the per-step noise scale of ParaDiGMS's stopping rule."""
        a_in, a_out = self.alpha_in, self.alpha_out
        var = (1 - a_out) / (1 - a_in) * (1 - a_in / a_out)
        scale2 = self.alpha_to**2 + self.sigma_to**2
        return (var * scale2).clamp(min=1e-8)

    def jump_coef(self) -> Tensor:
        """``[N, S, S + 3]``: row ``e`` jumps from any level straight past step ``e`` with
        one first-order (DDIM) step: the sample to level ``e + 1``, a history sample to
        level ``e``, a history prediction to the jump's ``x0`` (the coarse propagator)."""
        N, S = self.num_steps, self.num_slots
        out = torch.zeros(N, S, S + 3, dtype=torch.float64)
        for s, kind in enumerate(self.slots):
            if kind == "x0":
                out[:, s, S] = 1.0
            elif s == 0:
                out[:, s, S], out[:, s, S + 1] = self.alpha_to, self.sigma_to
            else:
                out[:, s, S], out[:, s, S + 1] = self.alpha_from, self.sigma_from
        return out

    @classmethod
    def build(cls, schedule: VPSchedule | SigmaSchedule, num_steps: int,
              kind: str | None = None, eta: float = 0.0) -> SamplingGrid:
        """The grid of a ``num_steps``-step sampler: ``kind`` is the solver (default: the
        schedule's own: ``"ddim"`` for a :class:`VPSchedule`)."""
        if isinstance(schedule, VPSchedule):
            return _vp_grid(schedule, num_steps, kind or schedule.solver, eta)
        if isinstance(schedule, SigmaSchedule):
            return _sigma_grid(schedule, num_steps, kind, eta)
        raise TypeError("schedule must be a VPSchedule or SigmaSchedule, got "
                        f"{type(schedule).__name__}")


def _alpha_bar(a: Tensor, s: Tensor) -> Tensor:
    return a**2 / (a**2 + s**2)


def _check_eta(eta: object) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (
            math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def _one_step(c_x: Tensor, c_x0: Tensor, c_eps: Tensor, noise: Tensor) -> Tensor:
    return torch.stack([c_x, c_x0, c_eps, noise], 1).unsqueeze(1)  # [N, 1, 4]


def _vp_grid(schedule: VPSchedule, num_steps: int, kind: str, eta: float) -> SamplingGrid:
    """DDIM (diffusers' DDIMScheduler, with ``eta``) and DDPM (DDPMScheduler, fixed_small)."""
    if kind not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm' for a VPSchedule, got {kind!r}")
    eta = _check_eta(eta)
    if kind == "ddpm" and eta != 0:
        raise ValueError("eta applies to the DDIM sampler; 'ddpm' samples ancestrally (eta=0)")
    T = schedule.num_train_timesteps
    ts = schedule.timesteps(num_steps)
    nxt = torch.cat([ts[1:], torch.tensor([-1])])  # the next timestep, -1 after the last
    if kind == "ddim" and schedule.prev_timestep == "stride":  # diffusers' DDIMScheduler
        prev = ts - T // ts.numel()
        if bool((prev[:-1] != nxt[:-1]).any()):
            warnings.warn(
                f"DDIM with prev_timestep='stride' (diffusers' DDIMScheduler) on a "
                f"{schedule.timestep_spacing!r} grid of {ts.numel()} steps: each step lands at "
                f"t - {T // ts.numel()}, not at the next timestep, so the model sees the wrong "
                "noise level and the samples' distribution is off (diffusers issue 12633). "
                "This equals diffusers' loop; schedule.with_conventions(prev_timestep='next') "
                "samples correctly", UserWarning, stacklevel=4)
    else:  # DDPMScheduler (and DDIM by default): the next timestep of the list
        prev = nxt
    ac = schedule.alphas_cumprod
    a_in = ac[ts.clamp(0, T - 1)]
    final = 1.0 if kind == "ddpm" else schedule.final_alpha_cumprod
    a_out = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.full_like(a_in, final))
    if bool((a_in == 0).any()) and schedule.prediction_type == "epsilon":
        raise ValueError(
            "the grid starts at zero terminal SNR (alphas_cumprod[T-1] = 0, diffusers' "
            "rescale_betas_zero_snr=True), where a network with prediction_type='epsilon' "
            "cannot give x0; zero-SNR models predict 'v_prediction' (or 'sample')")
    zero = torch.zeros_like(a_in)
    if kind == "ddim":
        var = (1 - a_out) / (1 - a_in) * (1 - a_in / a_out)
        noise = eta * var.clamp(min=0).sqrt()
        c_x0, c_eps, c_x = a_out.sqrt(), (1 - a_out - noise**2).clamp(min=0).sqrt(), zero
    else:
        alpha_t = a_in / a_out
        beta_t = 1 - alpha_t
        c_x0 = a_out.sqrt() * beta_t / (1 - a_in)
        c_x = alpha_t.sqrt() * (1 - a_out) / (1 - a_in)
        c_eps = zero
        var = ((1 - a_out) / (1 - a_in) * beta_t).clamp(min=1e-20)
        noise = torch.where(ts > 0, var.sqrt(), zero)
    return SamplingGrid(ts, a_in.sqrt(), (1 - a_in).sqrt(), a_out.sqrt(), (1 - a_out).sqrt(),
                        torch.ones(ts.numel(), dtype=torch.float64),
                        _one_step(c_x, c_x0, c_eps, noise), kind)


def _sigma_grid(schedule: SigmaSchedule, num_steps: int, kind: str | None,
                eta: float) -> SamplingGrid:
    solver = schedule.solver if kind is None else kind
    if solver == "ddim":  # the first-order step on a sigma grid is Euler (the same step)
        solver = "euler"
    if solver not in SLOTS or solver in ("ddpm",):
        raise ValueError(f"sampler must be one of {sorted(set(SLOTS) - {'ddpm'})} for a "
                         f"SigmaSchedule, got {kind!r}")
    if _check_eta(eta) != 0:
        raise ValueError("eta applies to DDIM on a VPSchedule; use solver='euler_ancestral' "
                         "for an ancestral sampler on a sigma grid")
    timesteps, sig, init = schedule.levels(num_steps)
    init = schedule.init_noise_sigma(solver, sig, init)
    N = timesteps.numel()
    a_m, s_m = schedule.model_alpha_sigma(sig)        # the network's parameterization
    a, s = schedule.state_alpha_sigma(sig, solver)    # the sampler's state
    # the network sees c_in * x: its own alpha over the state's (1 where they agree)
    c_in = a_m[:-1] / a[:-1] if schedule.family == "vp" else torch.ones(N, dtype=torch.float64)
    opts = schedule.solver_options
    if solver == "euler":
        coef = _first_order(a, s)
    elif solver == "euler_ancestral":
        coef = _ancestral(a, s)
    elif solver == "dpmpp_2m":
        coef = _dpmpp_2m(a, s, N, opts)
    else:
        coef = _unipc(a, s, N, opts)
    if not bool(torch.isfinite(coef).all()):
        raise ValueError(f"the {solver} coefficients are not finite on this grid "
                         f"(num_steps={N}, {schedule!r}); check the solver options")
    return SamplingGrid(timesteps, a[:-1], s[:-1], a[1:], s[1:], c_in, coef, solver,
                        SLOTS[solver], float(init))


def _first_order(a: Tensor, s: Tensor) -> Tensor:
    """``x' = (s'/s) x + (a' - a s'/s) x0``: DDIM, Euler (VE) and flow-matching Euler."""
    r = s[1:] / s[:-1]
    zero = torch.zeros_like(r)
    return _one_step(r, a[1:] - a[:-1] * r, zero, zero)


def _ancestral(a: Tensor, s: Tensor) -> Tensor:
    """The ancestral Euler step for ``x = alpha x0 + sigma eps``: in the variance-exploding
    variables ``x / alpha`` (levels ``v = sigma / alpha``) a deterministic Euler step down to
    ``v_down = v' q`` plus fresh noise ``v_up z`` with ``v_up = v' sqrt(1 - q^2)``,
    ``q = v' / v`` (diffusers' EulerAncestralDiscreteScheduler, where ``alpha = 1``), then
    scaled back by ``alpha'``:

        ``x' = (sigma' q / sigma) x + alpha' (1 - q^2) x0 + sigma' sqrt(1 - q^2) z``.

    It keeps the marginals ``alpha' x0 + sigma' eps`` for any ``alpha`` (DDIM with
    ``eta = 1``); at ``alpha = 0`` (flow matching's first level) ``q = 0``."""
    a0, s0, a1, s1 = a[:-1], s[:-1], a[1:], s[1:]
    q = torch.where(s1 > 0, (s1 * a0) / (s0 * a1).clamp(min=1e-300), torch.zeros_like(s1))
    zero = torch.zeros_like(q)
    return _one_step(s1 * q / s0, a1 * (1 - q**2), zero, s1 * (1 - q**2).clamp(min=0).sqrt())


def _lambda(a: Tensor, s: Tensor) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(a.numpy()) - np.log(s.numpy())


def _dpmpp_2m(a: Tensor, s: Tensor, N: int, opts: dict) -> Tensor:
    """DPM-Solver++ (diffusers' DPMSolverMultistepScheduler, ``dpmsolver++``, orders 1-2,
    ``midpoint`` or ``heun``). Slots ``(x, m_prev)``."""
    order = opts.get("solver_order", 2)
    final = "zero" if float(s[-1]) == 0 else "sigma_min"  # the levels say where they end
    lam = _lambda(a, s)
    an, sn = a.numpy(), s.numpy()
    coef = np.zeros((N, 2, 5))
    for j in range(N):
        last = j == N - 1
        lower_final = last and (opts.get("euler_at_final", False)
                                or (opts.get("lower_order_final", True) and N < 15)
                                or opts.get("final_sigmas_type", final) == "zero")
        o = 1 if (order == 1 or j < 1 or lower_final) else 2
        r = sn[j + 1] / sn[j]
        A = an[j + 1] - an[j] * r  # = -alpha_t (exp(-h) - 1)
        coef[j, 0, 0] = r
        coef[j, 0, 2] = A
        if o == 2:
            h, h0 = lam[j + 1] - lam[j], lam[j] - lam[j - 1]
            r0 = h0 / h
            if opts.get("solver_type", "midpoint") == "midpoint":
                w = 0.5 * A / r0
            else:  # heun: + alpha_t ((exp(-h) - 1) / h + 1) D1
                w = an[j + 1] * (np.expm1(-h) / h + 1.0) / r0
            coef[j, 0, 2] += w
            coef[j, 0, 1] -= w
        coef[j, 1, 2] = 1.0  # m_prev <- this step's x0
    return torch.from_numpy(coef)


def _unipc_b(h: float, order: int, bh2: bool) -> tuple[float, float, np.ndarray]:
    """UniPC's ``h_phi_1``, ``B_h`` and ``b`` (data prediction)."""
    hh = -h
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = np.expm1(hh) if bh2 else hh
    fact, b = 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return h_phi_1, B_h, np.array(b)


def _unipc(a: Tensor, s: Tensor, N: int, opts: dict) -> Tensor:
    """UniPC (diffusers' UniPCMultistepScheduler, ``predict_x0``, bh1/bh2, orders 1-2):
    at step ``j`` the corrector (UniC) first refines the sample with this step's model
    output, then the predictor (UniP) moves on. Slots ``(x, x_prev, m_1, m_2)``: the
    uncorrected sample, the previous corrected sample and the two latest predictions."""
    order = opts.get("solver_order", 2)
    bh2 = opts.get("solver_type", "bh2") == "bh2"
    disabled = set(opts.get("disable_corrector", ()))
    lam = _lambda(a, s)
    an, sn = a.numpy(), s.numpy()
    X, XP, M1, M2, X0 = 0, 1, 2, 3, 4
    coef = np.zeros((N, 4, 7))
    p_order = [0] * N
    for j in range(N):
        this = min(order, N - j) if opts.get("lower_order_final", True) else order
        p_order[j] = min(this, min(j, order) + 1)
        # the corrected sample x_c as a combination of the ingredients
        xc = np.zeros(7)
        if j > 0 and (j - 1) not in disabled:
            c = p_order[j - 1]
            h = lam[j] - lam[j - 1]
            h_phi_1, B_h, b = _unipc_b(h, c, bh2)
            xc[XP] = sn[j] / sn[j - 1]
            xc[M1] = -an[j] * h_phi_1
            if c == 1:
                rho = np.array([0.5])
            else:
                rk = (lam[j - 2] - lam[j - 1]) / h
                rho = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), b)
                xc[M2] += -an[j] * B_h * rho[0] / rk
                xc[M1] += an[j] * B_h * rho[0] / rk
            xc[X0] += -an[j] * B_h * rho[-1]
            xc[M1] += an[j] * B_h * rho[-1]
        else:
            xc[X] = 1.0
        # the predictor from x_c with this step's and the previous prediction
        p = p_order[j]
        h = lam[j + 1] - lam[j]
        h_phi_1, B_h, _ = _unipc_b(h, p, bh2)
        nxt = (sn[j + 1] / sn[j]) * xc
        nxt[X0] += -an[j + 1] * h_phi_1
        if p == 2:
            rk = (lam[j - 1] - lam[j]) / h
            w = an[j + 1] * B_h * 0.5 / rk
            nxt[M1] -= w
            nxt[X0] += w
        coef[j, 0] = nxt
        coef[j, 1] = xc
        coef[j, 2, X0] = 1.0
        coef[j, 3, M1] = 1.0
    return torch.from_numpy(coef)


def check_steps(schedule: VPSchedule | SigmaSchedule, num_steps: object) -> int:
    """``num_steps`` checked against the schedule's limit."""
    return check_num_steps(num_steps, schedule.max_steps)
