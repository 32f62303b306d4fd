"""Stochastic solvers of the reverse SDE: EDM's stochastic sampler (Algorithm 2), Euler
ancestral, DPM-Solver++(2M) SDE, DDPM's ancestral step and score_sde's predictor-corrector
sampler. Their parameters are keyword arguments (traced or bound with
``functools.partial``); step i draws its noise from ``step_key(carry)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import NoiseProcess, expand_to_rank
from diffjax.diffusion.solvers.core import History, X0Fn, advance, half_log_snr, lands_on_zero_noise, step_key
from diffjax.diffusion.solvers.ode import heun_update

__all__ = [
    "ddpm_ancestral_step", "dpmpp_2m_sde_step", "edm_stochastic_step", "euler_ancestral_step", "pc_step",
    "transition_coefficients",
]


def edm_stochastic_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History,
    *, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) in y = x / alpha, sigma~.

    gamma = min(S_churn / K, sqrt(2) - 1) where S_tmin <= sigma~ <= S_tmax (else 0); the
    noise level is raised to sigma^ = (1 + gamma) sigma~ by adding sqrt(sigma^2 - sigma~^2)
    S_noise z, then ``heun_step``'s update runs from sigma^ to sigma~_{t'} (Euler when it is
    0). NFE 2 per step (1 on a step to sigma~ = 0). With S_churn = 0 it is ``heun_step``
    exactly. The S_* parameters may be traced.
    """
    s_cur = process.edm_sigma(t_cur)
    in_range = jnp.logical_and(s_cur >= s_tmin, s_cur <= s_tmax)
    gamma = jnp.where(in_range, jnp.minimum(s_churn / carry.num_steps, jnp.sqrt(2.0) - 1.0), 0.0)
    churned = gamma > 0
    s_hat = s_cur * (1.0 + gamma)
    t_hat = jnp.where(churned, process.t_from_edm_sigma(s_hat), t_cur).astype(jnp.asarray(t_cur).dtype)
    z = jax.random.normal(step_key(carry), x.shape, x.dtype)
    y_hat = x / process.alpha(t_cur) + jnp.sqrt(jnp.maximum(s_hat**2 - s_cur**2, 0.0)) * s_noise * z
    x_hat = jnp.where(churned, process.alpha(t_hat) * y_hat, x).astype(x.dtype)
    x_next, x0 = heun_update(process, denoise_x0, x_hat, t_hat, t_next)
    return x_next, advance(carry, x0, t_hat)


def euler_ancestral_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History, *, eta=1.0, s_noise=1.0
):
    """k-diffusion's ``sample_euler_ancestral`` in y = x / alpha and sigma~ = ``edm_sigma``.

    sigma_up = min(sigma~', eta sqrt(sigma~'^2 (sigma~^2 - sigma~'^2) / sigma~^2)),
    sigma_down = sqrt(sigma~'^2 - sigma_up^2); an Euler step of dy/dsigma~ = (y - D)/sigma~
    to sigma_down, then sigma_up S_noise z added: y' = y + (sigma_down - sigma~)(y - D)/sigma~
    + sigma_up S_noise z, x' = alpha' y'. eta = 1 is ancestral sampling (the posterior's
    variance in EDM's sigma); eta = 0 is DDIM (Euler in (y, sigma~)), to float rounding.
    """
    x0 = denoise_x0(x, t_cur)
    s_cur, s_next = process.edm_sigma(t_cur), process.edm_sigma(t_next)
    s_up = jnp.minimum(s_next, eta * jnp.sqrt(s_next**2 * (s_cur**2 - s_next**2) / s_cur**2))
    s_down = jnp.sqrt(s_next**2 - s_up**2)
    y = x / process.alpha(t_cur)
    z = jax.random.normal(step_key(carry), x.shape, x.dtype)
    y_next = y + (s_down - s_cur) * (y - x0) / s_cur + s_up * s_noise * z
    return (process.alpha(t_next) * y_next).astype(x.dtype), advance(carry, x0, t_cur)


def dpmpp_2m_sde_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History,
    *, eta=1.0, s_noise=1.0, lower_order_final: bool = True,
):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, SDE-DPM-Solver++(2M); k-diffusion's
    ``sample_dpmpp_2m_sde``, midpoint form) in data prediction, h = lambda_{t'} - lambda_t:

        x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-(1 + eta) h}) D~
             + sigma' sqrt(1 - e^{-2 eta h}) S_noise z,

    D~ = x0_i + 1/(2r) (x0_i - x0_{i-1}), r = h_{i-1}/h (first order on the first step, on a
    step that lands on sigma = 0 and, with ``lower_order_final``, on the last). eta = 1 is the reverse SDE's exact solution for
    a constant D (the data-prediction SDE-DPM-Solver); eta = 0 is ``dpmpp_2m_step`` exactly.
    """
    x0 = denoise_x0(x, t_cur)
    lam_prev, lam_cur, lam_next = (half_log_snr(process, t) for t in (carry.t, t_cur, t_next))
    h = lam_next - lam_cur
    first = carry.step == 0
    last = jnp.logical_or(jnp.logical_and(lower_order_final, carry.step == carry.num_steps - 1),
                          lands_on_zero_noise(process, t_next))
    r = jnp.where(jnp.logical_or(first, last), 1.0, (lam_cur - lam_prev) / h)
    combined = jnp.where(jnp.logical_or(first, last), x0, x0 + (0.5 / r) * (x0 - carry.x0))
    sigma_ratio = jnp.exp(process.log_sigma(t_next) - process.log_sigma(t_cur))
    z = jax.random.normal(step_key(carry), x.shape, x.dtype)
    noise = process.sigma(t_next) * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) * s_noise * z
    x_next = (
        sigma_ratio * jnp.exp(-eta * h) * x - process.alpha(t_next) * jnp.expm1(-(1.0 + eta) * h) * combined + noise
    )
    return x_next.astype(x.dtype), advance(carry, x0, t_cur)


def transition_coefficients(process: NoiseProcess, t_cur, t_next):
    """The forward transition between two times s = ``t_next`` < t = ``t_cur`` and its posterior.

    x_t = alpha_{t|s} x_s + sigma_{t|s} z with alpha_{t|s} = alpha_t / alpha_s and
    sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = -sigma_t^2 expm1(lambda_t - lambda_s)
    (lambda the log-SNR log(alpha^2/sigma^2)); the ratio r = sigma^2_{t|s} / sigma_t^2 =
    -expm1(lambda_t - lambda_s) is formed without subtracting close numbers. The posterior
    q(x_s | x_t, x_0) (DDPM eqs. 6-7, written for any alpha_t, sigma_t) has

        mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma^2_{t|s} / sigma_t^2) x_0
             = exp(log alpha_{t|s} + 2 log(sigma_s/sigma_t)) x_t + alpha_s r x_0,
        variance = r sigma_s^2 (DDPM's beta~), and sigma^2_{t|s} = r sigma_t^2 is DDPM's beta.

    At sigma_s = 0 (log sigma_s = -inf) this gives r = 1 and mean = alpha_s x_0.

    Returns:
      dict of scalars: ``alpha_ts`` alpha_{t|s}, ``ratio`` r, ``x_coef`` and ``x0_coef`` the
      posterior mean's coefficients, ``sigma_s``, ``sigma_t``, ``alpha_t``.
    """
    log_alpha_t, log_alpha_s = process.log_alpha(t_cur), process.log_alpha(t_next)
    log_sigma_t, log_sigma_s = process.log_sigma(t_cur), process.log_sigma(t_next)
    lambda_difference = 2.0 * ((log_alpha_t - log_sigma_t) - (log_alpha_s - log_sigma_s))  # lambda_t - lambda_s <= 0
    ratio = -jnp.expm1(lambda_difference)
    return dict(
        alpha_ts=jnp.exp(log_alpha_t - log_alpha_s),
        ratio=ratio,
        x_coef=jnp.exp(log_alpha_t - log_alpha_s + 2.0 * (log_sigma_s - log_sigma_t)),
        x0_coef=jnp.exp(log_alpha_s) * ratio,
        sigma_s=jnp.exp(log_sigma_s),
        sigma_t=jnp.exp(log_sigma_t),
        alpha_t=jnp.exp(log_alpha_t),
    )


def ddpm_ancestral_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History, *, variance: str = "small", s_noise=1.0
):
    """DDPM's ancestral step (Ho et al. 2020, Algorithm 2) between two grid times of any process.

    x_s = mean + std S_noise z with the true posterior q(x_s | x_t, x_0 = D(x_t, t)) of
    ``transition_coefficients`` (s = t_next, t = t_cur):

        mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) x + (alpha_s sigma^2_{t|s} / sigma_t^2) D,
        std^2 = sigma^2_{t|s} sigma_s^2 / sigma_t^2 (``variance="small"``: beta~, DDPM's
                fixed_small) or sigma^2_{t|s} (``"large"``: beta, DDPM's fixed_large).

    Both coefficients come from expm1 of the log-SNR difference (no cancellation on short
    steps). z is drawn from ``step_key(carry)``; ``s_noise`` (may be traced) scales it. NFE 1.

    On ``processes.discrete_process(schedule)`` with a grid of its knots
    (``time_grids.discrete_grid``) the steps are those of ``samplers.ddpm_step`` on the chain
    respaced to the grid's steps: the K solver steps are the sampler's steps from its last
    index down to index 1, each landing on a step n >= 0 with sigma > 0 and noise added (the
    last of them lands on grid[-1] = step 0). DDPM's own last step, from step 0 to x_0 with
    no noise (its mean is x0-hat there, alpha_bar_{-1} = 1), is ``solve(...,
    denoise_to_zero=True)``. A step that lands on sigma_s = 0 (a continuous grid ending at
    t = 0) adds no noise with either variance: its mean is alpha_s D (DDPM's "no noise at
    t = 0").

    Learned variances are not used: the continuous framework's ``denoise_x0`` carries only the
    data prediction D (``x0_predictor`` drops a learned-variance output). A network trained
    with a learned variance is sampled with its own variance by the discrete
    ``samplers.sample(method="ddpm")``.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    x0 = denoise_x0(x, t_cur)
    c = transition_coefficients(process, t_cur, t_next)
    scale = c["sigma_s"] if variance == "small" else c["sigma_t"]
    std = jnp.where(c["sigma_s"] > 0, scale * jnp.sqrt(c["ratio"]), 0.0)
    z = jax.random.normal(step_key(carry), x.shape, x.dtype)
    x_next = c["x_coef"] * x + c["x0_coef"] * x0 + std * s_noise * z
    return x_next.astype(x.dtype), advance(carry, x0, t_cur)


def pc_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History,
    *, snr=0.16, corrector_steps: int = 1, s_noise=1.0,
):
    """score_sde's predictor-corrector step (Song et al. 2021, "Score-Based Generative Modeling
    through SDEs", appendix G, Algorithms 2-5): ``corrector_steps`` Langevin corrector steps at
    t_cur, then the reverse-diffusion predictor from t_cur to t_next.

    The score at t is s(x) = (alpha_t D(x, t) - x) / sigma_t^2.

    Corrector (Algorithms 4 and 5), M = ``corrector_steps`` times at t = t_cur:
    z ~ N(0, I), g = s(x), eps = 2 a (snr ||z|| / ||g||)^2, x <- x + eps g + sqrt(2 eps) S_noise z,
    the norms per example over all its elements, a = alpha_{t|s}^2 (score_sde's alpha_i =
    1 - beta_i of its VP chain; 1 for VE, where alpha_{t|s} = 1). score_sde's code averages
    the per-example norms over the batch (one step size for the batch); here each example has
    its own, which is Algorithm 4 applied to each example (samples do not depend on the rest
    of the batch). In low dimension ||z|| / ||g|| has heavy tails (||g|| near 0 at a mode),
    so the snr rule is meant for high-dimensional data (images).

    Predictor (reverse diffusion, eqs. 46-47): with the forward chain between s = t_next and
    t = t_cur discretised as x_t = x_s + f(x_s) + G z, f(x) = (alpha_{t|s} - 1) x,
    G^2 = sigma^2_{t|s} (the process's exact transition; for score_sde's VP chain
    alpha_{t|s} = sqrt(1 - beta_i), G^2 = beta_i, its Algorithm 3; for VE alpha_{t|s} = 1,
    G^2 = sigma_t^2 - sigma_s^2, Algorithm 2):

        x_s = (2 - alpha_{t|s}) x + sigma^2_{t|s} s(x) + sigma_{t|s} S_noise z.

    Order: score_sde's ``pc_sampler`` calls ``corrector_update_fn`` then
    ``predictor_update_fn`` at each time t_i of its grid (the paper's Algorithm 1 writes the
    predictor first and corrects at the new time; the code's order is the one here, so the
    start x_T is corrected and the last predictor step is not). score_sde returns the last
    step's mean (``denoise=True``); here the last step adds its noise like the others and
    ``solve(..., denoise_to_zero=True)`` returns D instead. A step onto sigma_s = 0 adds no
    predictor noise.

    The noises: ``jax.random.split(step_key(carry), corrector_steps + 1)``, key j for
    corrector step j, the last key for the predictor. ``snr`` and ``s_noise`` (which scales
    every noise the step adds) may be traced; ``corrector_steps`` is a static Python int.
    NFE 1 + corrector_steps.
    """
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative Python int, got {corrector_steps!r}")
    c = transition_coefficients(process, t_cur, t_next)
    variance_ts = c["ratio"] * c["sigma_t"] ** 2  # sigma^2_{t|s}
    a = c["alpha_ts"] ** 2
    keys = jax.random.split(step_key(carry), corrector_steps + 1)

    def score(x):
        x0 = denoise_x0(x, t_cur)
        return (c["alpha_t"] * x0 - x) / c["sigma_t"] ** 2, x0

    def per_example_norm(v):
        return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))

    for j in range(corrector_steps):
        z = jax.random.normal(keys[j], x.shape, x.dtype)
        g, _ = score(x)
        eps = 2.0 * a * jnp.square(snr * per_example_norm(z) / per_example_norm(g))
        eps = expand_to_rank(eps, x.ndim)
        x = (x + eps * g + jnp.sqrt(2.0 * eps) * s_noise * z).astype(x.dtype)

    g, x0 = score(x)
    z = jax.random.normal(keys[-1], x.shape, x.dtype)
    std = jnp.where(c["sigma_s"] > 0, jnp.sqrt(variance_ts), 0.0)
    x_next = (2.0 - c["alpha_ts"]) * x + variance_ts * g + std * s_noise * z
    return x_next.astype(x.dtype), advance(carry, x0, t_cur)
