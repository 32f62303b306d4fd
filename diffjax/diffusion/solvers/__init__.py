"""Solvers of the probability-flow ODE and the reverse SDE in the continuous view (``processes``).

Every solver is one step function with the same signature,

    step(process, denoise_x0, x, t_cur, t_next, carry) -> (x_next, carry)

with ``process`` a ``processes.NoiseProcess``, ``denoise_x0(x, t) -> x0_hat`` the data
prediction (EDM's D; build it from a diffjax denoiser with ``x0_predictor``), ``x`` [B, ...]
the state at time ``t_cur`` (a scalar), ``t_next`` < ``t_cur`` the time it is moved to, and
``carry`` a ``History`` (the data prediction and time of the previous step, for multistep
solvers, and the step's index). ``solve`` drives any step over a time grid (``time_grids``:
a float32 array from t_max down to t_min) inside one ``jax.lax.scan``; the grid is data, so a
jitted ``solve`` compiles once per (step, grid length) whatever the grid's values.

The probability-flow ODE of x_t = alpha_t x_0 + sigma_t eps (Song et al. 2021, eq. 13;
Karras et al. 2022, eq. 4 with s = alpha) in data prediction D = E[x_0 | x_t] is

    dx/dt = alpha_t' D + sigma_t' (x - alpha_t D) / sigma_t
          = (log sigma_t)' x + ((log alpha_t)' - (log sigma_t)') alpha_t D,

and in EDM's scaled variable y = x / alpha_t with sigma~_t = sigma_t / alpha_t as time it is
dy/dsigma~ = (y - D) / sigma~ (Karras et al. 2022, eq. 3 after the change of variable).

The solvers (``SOLVERS``: name -> ``Solver`` record, with its NFE = denoiser calls per step,
whether it is stochastic, and its traced and static options with their defaults):

* ``euler_step`` (1): explicit Euler in t on the first form above; (log alpha)' and
  (log sigma)' come from ``jax.jvp`` of the process (on a ``DiscreteVP`` they are the slopes
  of its piecewise-linear table: the segment above t_cur on a knot). First order.
* ``ddim_step`` (1): DDIM = first-order DPM-Solver++ (Lu et al. 2022b, eq. 9 with k = 1),
  x_{t'} = (sigma_{t'}/sigma_t) x - alpha_{t'} (e^{-h} - 1) D(x, t), h = l_{t'} - l_t, with
  l = log(alpha / sigma) the *half* log-SNR (``process.log_snr`` is 2 l). It is also Euler in
  EDM's (y, sigma~) (k-diffusion's ``sample_euler``; Karras et al. 2022, section 3). First order.
* ``heun_step`` (2): EDM's Heun (Karras et al. 2022, Algorithm 1, deterministic) in (y, sigma~):
  an Euler step then the trapezoidal correction, skipped (a plain Euler step, 1 NFE) when
  sigma~_{t'} = 0. For ``processes.EDM`` (alpha = 1) y is x and sigma~ is sigma. Second order.
* ``dpmpp_2m_step`` (1): DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): D_i = (1 + 1/(2r))
  x0_i - 1/(2r) x0_{i-1}, r = h_{i-1}/h_i, in the first-order formula; first-order on the
  first step (no history), on a step that lands on sigma = 0 (``lands_on_zero_noise``: h is
  infinite there) and, with ``lower_order_final`` (default), on the last step (the lower-order
  final step that keeps few-step sampling stable). Second order.
* ``dpmpp_3m_step`` (1): DPM-Solver++(3M): the Taylor expansion of x0 in lambda to second
  order (Lu et al. 2022b, eq. 8), its derivatives from the quadratic through the last three
  predictions, each term integrated exactly; orders 1, 2 on the first two steps and, with
  ``lower_order_final``, 2, 1 on the last two. Third order. The second-derivative term is
  alpha' (h^2 - 2h + 2 - 2e^{-h}) x0''/2, the exact integral of u^2 e^{-(h - u)} over the
  step (DPM-Solver's own code weights it by half: ``docs/solvers.md``).
* ``unipc_step`` (1; ``SOLVERS``: ``unipc_2``, ``unipc_3``, order 2 or 3, B(h) = e^h - 1):
  UniPC (Zhao et al. 2023) in data prediction, in ``solvers.unipc``. The predictor UniP-p,
  x' = (sigma'/sigma) x^c - alpha' (e^{-h} - 1) x0_i - alpha' B(-h) sum_m a_m D_m / r_m with
  D_m = x0_{i-m} - x0_i, r_m = (lambda_{i-m} - lambda_i)/h (m < p), and a solving the order
  conditions R_{p-1}(h) a = g(-h)/B(-h) (a_1 = 1/2 for one difference; with B = e^h - 1 UniP-2
  is DPM-Solver++(2M) and UniP-3 DPM-Solver++(3M)). The corrector UniC-p recomputes the
  step from x^c with the new point's D(x~', t') (r = 1) added to the differences, which
  raises the order by one; that evaluation is the next step's x0, so NFE = 1. Warm-up
  (order min(p, i + 1) on step i) and ``lower_order_final`` as DPM-Solver++; the carry keeps
  the corrected state (``History.x``). No corrector after the last step (it would cost one
  more NFE): the result is the last prediction. UniC-p on UniP-p has order p + 1,
  ``use_corrector=False`` is UniP-p, order p (the measured orders, and the settings each
  belongs to, are in ``docs/solvers.md``).

The stochastic solvers (their parameters are keyword arguments, bound with
``functools.partial``, and may be traced; the noise of step i is drawn from
``fold_in(key, i)`` of ``solve``'s ``key``):

* ``edm_stochastic_step`` (2): EDM's Algorithm 2 (S_churn, S_tmin, S_tmax, S_noise): noise
  added to raise sigma~ by gamma, then the Heun step; ``heun_step`` when S_churn = 0.
* ``euler_ancestral_step`` (1): k-diffusion's Euler ancestral in (y, sigma~): an Euler step
  to sigma_down, then sigma_up fresh noise (eta scales sigma_up); DDIM when eta = 0.
* ``dpmpp_2m_sde_step`` (1): DPM-Solver++(2M) SDE (k-diffusion's midpoint form) in data
  prediction; ``dpmpp_2m_step`` when eta = 0.
* ``ddpm_ancestral_step`` (1): DDPM's ancestral step (Ho et al. 2020, Algorithm 2) between
  grid times of any process: x_s drawn from the true posterior q(x_s | x_t, x_0 = D), its
  variance beta~ (``variance="small"``) or beta (``"large"``). On a discrete chain's knots
  it is ``samplers.ddpm_step`` with fixed_small / fixed_large (a learned variance is not
  read: ``samplers.sample(method="ddpm")`` samples with it).
* ``pc_step`` (1 + corrector_steps, default 2): score_sde's predictor-corrector sampler (Song
  et al. 2021, appendix G): Langevin corrector steps at t with the signal-to-noise step size
  (``snr``), then the reverse-diffusion predictor on the process's exact transition.

Options of the data-prediction solvers, as wrappers of ``denoise_x0``: ``clip_x0`` (clip D
to [-1, 1]) and ``dynamic_threshold`` (Imagen's per-example percentile thresholding).

Endpoint convention: the trajectory ends at the grid's last time (t_min, where sigma > 0);
``solve(..., denoise_to_zero=True)`` returns D(x, t_min) instead, one more NFE (EDM's last
step to sigma_N = 0; DDPM's and DDIM's last step from step 0 to x_0).

References: Song et al. 2021 (score_sde) eq. 13; Song et al. 2021 (DDIM) eq. 13; Karras et
al. 2022 (EDM) eqs. 3-4 and Algorithm 1; Lu et al. 2022a (DPM-Solver) and 2022b
(DPM-Solver++) section 4 and Algorithm 2; Zhao et al. 2023 (UniPC) section 3 and appendix.
"""

from diffjax.diffusion.solvers.core import History, X0Fn, lands_on_zero_noise, solve, step_key, x0_predictor
from diffjax.diffusion.solvers.ode import ddim_step, dpmpp_2m_step, dpmpp_3m_step, euler_step, heun_step
from diffjax.diffusion.solvers.options import clip_x0, dynamic_threshold
from diffjax.diffusion.solvers.registry import SOLVERS, Solver, option_defaults
from diffjax.diffusion.solvers.sde import (
    ddpm_ancestral_step,
    dpmpp_2m_sde_step,
    edm_stochastic_step,
    euler_ancestral_step,
    pc_step,
)
from diffjax.diffusion.solvers.unipc import unipc_step

__all__ = [
    "History",
    "SOLVERS",
    "Solver",
    "X0Fn",
    "clip_x0",
    "ddim_step",
    "ddpm_ancestral_step",
    "dpmpp_2m_sde_step",
    "dpmpp_2m_step",
    "dpmpp_3m_step",
    "dynamic_threshold",
    "edm_stochastic_step",
    "euler_ancestral_step",
    "euler_step",
    "heun_step",
    "lands_on_zero_noise",
    "option_defaults",
    "pc_step",
    "solve",
    "step_key",
    "unipc_step",
    "x0_predictor",
]
