"""The diffusion math: pure functions of arrays and schedule pytrees, never of a config.

* ``schedules``: beta schedules, the float32 ``Schedule`` tables, respacing.
* ``processes``: noise processes in continuous time (VP-linear, VP-cosine, EDM, and every
  discrete schedule as ``discrete_process``): alpha_t, sigma_t, log-SNR and its inverse.
* ``time_grids``: solvers' time grids as data (uniform in t or log-SNR, Karras, quadratic, discrete).
* ``parameterization``: ``DiffusionSpec``, how a denoiser's output is read, eps/x_0/v/score
  conversions (discrete and continuous).
* ``gaussian``: q(x_t | x_0), the posterior, ``p_mean_variance``.
* ``losses``: Gaussian KL, the discretised decoder, VLB terms, training objectives.
* ``edm``: EDM's preconditioning (c_skip, c_out, c_in, c_noise), training noise levels and
  loss weights for Table 1's VP, VE, iDDPM and EDM columns; ``precondition`` wraps a raw network.
* ``weighting``: every objective as a weighting W(lambda) of the x_0 error (Kingma & Gao 2023):
  eps / x_0 / v MSE, min-SNR, the ELBO, EDM's; ``per_level_loss`` and ``WEIGHTINGS``.
* ``timesteps``: uniform and loss-aware importance sampling of t.
* ``samplers``: DDPM ancestral and DDIM in ``lax.scan``, classifier-free guidance.
* ``solvers``: deterministic probability-flow ODE solvers in the continuous view (Euler,
  DDIM, EDM's Heun, DPM-Solver++ 2M and 3M, UniPC-2/3) and stochastic samplers (EDM's
  Algorithm 2, Euler ancestral, DPM-Solver++(2M) SDE, DDPM's ancestral step, score_sde's
  predictor-corrector) driven by one ``lax.scan`` over a time grid.
* ``latent``: DDIM's latent space: deterministic encoding (a solver run up the reversed grid),
  decoding, slerp of two latents and interpolation through them.
* ``likelihood``: the full variational bound in bits/dim.
* ``vdm``: variational diffusion models (Kingma et al. 2021): gamma = -log-SNR schedules, the
  continuous (L_inf) and T-step diffusion losses, prior and 8-bit reconstruction terms in
  bits/dim, low-discrepancy times, Fourier features, the schedule's variance gradient (the
  learned schedules' networks are in ``diffjax.models.noise_schedule``).
* ``ode_likelihood``: the probability-flow ODE log-likelihood (diffrax, batch-shared adaptive
  steps; exact or Hutchinson divergence; uniform dequantisation of 8-bit data, bits/dim).
* ``analytic``: the exact denoiser of a Gaussian mixture (tests and baselines).

Nothing here imports another diffjax package.
"""
