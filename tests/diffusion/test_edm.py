"""EDM's preconditioning (Karras et al. 2022, Table 1): the four columns against the table
written out again in float64 NumPy, EDM's design principles (unit-variance input and target,
lambda c_out^2 = 1), the exact denoiser of Gaussian data, the two forms of the loss, the
training noise levels, and jit / vmap / shapes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import edm, processes

KINDS = ("vp", "ve", "iddpm", "edm")
TIGHT = dict(rtol=1e-12, atol=0.0)


def sigmas_for(kind):
    """float64 test noise levels: a log grid over [2e-3, 200], plus (iDDPM) table entries."""
    grid = np.geomspace(2e-3, 200.0, 41)
    if kind == "iddpm":
        u = edm.iddpm_u()
        grid = np.concatenate([grid, u[[0, 1, 7, 100, 500, 998, 999]]])
    return grid


# ------------------------------------------------- Table 1, written out in NumPy


def numpy_iddpm_u(M=1000, C1=0.001, C2=0.008):
    """u_j from the recursion solved in closed form: 1 + u_j^2 = prod_{k=j+1..M} 1/r_k with
    r_k = max(alpha_bar_{k-1}/alpha_bar_k, C1) and u_M = 0."""
    j = np.arange(M + 1)
    alpha_bar = np.sin(np.pi / 2 * j / (M * (C2 + 1))) ** 2
    with np.errstate(divide="ignore"):
        r = np.maximum(alpha_bar[:-1] / alpha_bar[1:], C1)  # r[k - 1] = r_k, k = 1..M
    log_prod = np.concatenate([np.cumsum(-np.log(r)[::-1])[::-1], [0.0]])  # sum over k > j
    return np.sqrt(np.expm1(log_prod))


def numpy_table(kind, sigma):
    """(c_skip, c_out, c_in, c_noise, lambda) of Table 1 at float64 sigma."""
    one = np.ones_like(sigma)
    if kind == "vp":
        beta_d, beta_min, M = 19.9, 0.1, 1000
        t = (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(sigma**2)) - beta_min) / beta_d
        return one, -sigma, 1 / np.sqrt(sigma**2 + 1), (M - 1) * t, 1 / sigma**2
    if kind == "ve":
        return one, sigma, one, np.log(sigma / 2), 1 / sigma**2
    if kind == "iddpm":
        M = 1000
        u = numpy_iddpm_u()[:M]
        j = np.array([np.argmin(np.abs(u - s)) for s in sigma])
        return one, -sigma, 1 / np.sqrt(sigma**2 + 1), M - 1 - j, 1 / sigma**2
    sd = 0.5
    return (
        sd**2 / (sigma**2 + sd**2),
        sigma * sd / np.sqrt(sd**2 + sigma**2),
        1 / np.sqrt(sigma**2 + sd**2),
        np.log(sigma) / 4,
        (sigma**2 + sd**2) / (sigma * sd) ** 2,
    )


def test_iddpm_table_matches_closed_form_product():
    """The recursion (edm.py) against its product form; rounding accumulates over the M = 1000
    steps (about M * 2.2e-16 = 2.2e-13 relative at u_0)."""
    u = edm.iddpm_u()
    expected = numpy_iddpm_u()
    assert u.shape == (1001,) and u[-1] == 0.0 and np.all(np.diff(u) < 0)
    np.testing.assert_allclose(u, expected, rtol=1e-12, atol=0.0)
    # the C1 clip acts only at j = 1 (alpha_bar_0 = 0): u_0^2 + 1 = (u_1^2 + 1) / C1
    np.testing.assert_allclose(u[0] ** 2 + 1, (u[1] ** 2 + 1) / 0.001, rtol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_columns_match_table1(kind):
    sigma = sigmas_for(kind)
    column = edm.get_column(kind)
    with jax.enable_x64(True):
        got = jax.jit(lambda s: (*column.coefficients(s), column.loss_weight(s)))(jnp.asarray(sigma))
    names = ("c_skip", "c_out", "c_in", "c_noise", "lambda")
    for name, actual, expected in zip(names, got, numpy_table(kind, sigma)):
        assert actual.dtype == jnp.float64 and actual.shape == sigma.shape, name
        if kind == "iddpm" and name == "c_noise":
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            np.testing.assert_allclose(actual, expected, **TIGHT, err_msg=f"{kind} {name}")


def test_iddpm_c_noise_on_its_table_is_the_step():
    """sigma = u_j gives c_noise = M - 1 - j for every trained j, in float64 and float32."""
    column = edm.IDDPMPrecond()
    u = edm.iddpm_u()
    steps = np.arange(999, -1, -1)
    with jax.enable_x64(True):
        np.testing.assert_array_equal(column.coefficients(jnp.asarray(u[:1000])).c_noise, steps)
    np.testing.assert_array_equal(column.coefficients(jnp.asarray(u[:1000], jnp.float32)).c_noise, steps)
    # u_M = 0 is not a step: sigma -> 0 maps to step 0
    assert float(column.coefficients(jnp.asarray(0.0)).c_noise) == 0.0


def test_vp_column_is_the_vp_linear_process():
    """VP's sigma(t) is ``processes.VPLinear`` (beta_max = 0.1 + 19.9) seen through EDM's sigma."""
    t = np.linspace(1e-5, 1.0, 97)
    column = edm.VPPrecond()
    with jax.enable_x64(True):
        sigma = column.sigma_of_t(jnp.asarray(t))
        np.testing.assert_allclose(sigma, processes.VPLinear(beta_min=0.1, beta_max=20.0).edm_sigma(jnp.asarray(t)), rtol=1e-12)
        np.testing.assert_allclose(column.t_of_sigma(sigma), t, rtol=1e-12)
        np.testing.assert_allclose(sigma, np.sqrt(np.expm1(0.5 * 19.9 * t**2 + 0.1 * t)), rtol=1e-12)


# ------------------------------------------------------ EDM's design principles


def test_edm_lambda_times_c_out_squared_is_one_in_every_column():
    for kind in KINDS:
        sigma = sigmas_for(kind)
        column = edm.get_column(kind)
        with jax.enable_x64(True):
            s = jnp.asarray(sigma)
            product = column.loss_weight(s) * column.coefficients(s).c_out ** 2
        np.testing.assert_allclose(product, 1.0, rtol=1e-14, err_msg=kind)


def test_edm_unit_variance_of_input_and_target_closed_form():
    """Data of variance sd^2: Var(c_in x) = c_in^2 (sd^2 + sigma^2) and the effective target
    (y - c_skip x)/c_out has variance ((1 - c_skip)^2 sd^2 + c_skip^2 sigma^2)/c_out^2: both 1."""
    sigma = np.geomspace(1e-3, 1e3, 61)
    for sd in (0.5, 0.2, 1.7):
        c = edm.EDMPrecond(sigma_data=sd)
        with jax.enable_x64(True):
            c_skip, c_out, c_in, _ = (np.asarray(a) for a in c.coefficients(jnp.asarray(sigma)))
        np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-13)
        np.testing.assert_allclose(((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2, 1.0, rtol=1e-12)


@pytest.mark.parametrize("data", ["gaussian", "two_points"])
def test_edm_unit_variance_monte_carlo(data):
    """The same by sampling (data of std sd = 0.5, Gaussian or +-sd with equal odds: only its
    second moment matters). Each second moment mean(z^2) is within 5 of its standard errors
    sqrt(Var(z^2)/N), N = 200_000, of 1."""
    rng = np.random.default_rng(0)
    n_samples, sd = 200_000, 0.5
    if data == "gaussian":
        y = rng.normal(0.0, sd, n_samples)
    else:
        y = sd * rng.choice([-1.0, 1.0], n_samples)
    column = edm.EDMPrecond(sigma_data=sd)
    for sigma in (0.002, 0.1, 0.5, 2.0, 80.0):
        x = y + sigma * rng.standard_normal(n_samples)
        with jax.enable_x64(True):
            network_input = np.asarray(column.coefficients(jnp.asarray(sigma)).c_in) * x
            target = np.asarray(edm.raw_target(column, jnp.asarray(y[:, None]), jnp.asarray(x[:, None]), sigma))[:, 0]
        for z in (network_input, target):
            second = z**2
            assert abs(second.mean() - 1.0) < 5 * second.std() / math.sqrt(n_samples), (sigma, second.mean())


def gaussian_denoiser(s):
    """The exact denoiser of data N(0, s^2 I): E[y | y + n] = s^2 / (s^2 + sigma^2) x."""
    return lambda x, sigma: (s**2 / (s**2 + sigma**2))[:, None, None] * x


def ideal_raw_network(column, exact):
    """F*(x_in, c_noise): sigma and x recovered from the network's own inputs, then the raw
    output that makes D the exact denoiser (``raw_target``)."""

    def raw(x_in, c_noise):
        sigma = column.sigma_from_c_noise(c_noise)
        x = x_in / column.coefficients(sigma).c_in[:, None, None]
        return edm.raw_target(column, exact(x, sigma), x, sigma)

    return raw


@pytest.mark.parametrize("kind", KINDS)
def test_exact_gaussian_denoiser_is_recovered(kind):
    """precondition(F*) returns the exact denoiser D* = s^2/(s^2 + sigma^2) x, and F* =
    (D* - c_skip x)/c_out, for data std s in {0.5, 1.3}; float64. iDDPM's sigma are its
    table entries (its c_noise is only invertible there)."""
    column = edm.get_column(kind)
    if kind == "iddpm":
        sigma = edm.iddpm_u()[[0, 10, 300, 600, 900, 999]]
    else:
        sigma = np.array([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((sigma.size, 5, 3)) * np.sqrt(1.0 + sigma**2)[:, None, None]
    for s in (0.5, 1.3):
        exact = gaussian_denoiser(s)
        with jax.enable_x64(True):
            xs, ss = jnp.asarray(x), jnp.asarray(sigma)
            denoised = jax.jit(edm.precondition(column, ideal_raw_network(column, exact)))(xs, ss)
            c_skip, c_out, _, _ = (np.asarray(a)[:, None, None] for a in column.coefficients(ss))
            f_star = np.asarray(edm.raw_target(column, exact(xs, ss), xs, ss))
        d_star = (s**2 / (s**2 + sigma**2))[:, None, None] * x
        np.testing.assert_allclose(f_star, (d_star - c_skip * x) / c_out, rtol=1e-14, atol=0)
        # D = c_skip x + c_out F* is a difference of two terms much larger than D where c_skip = 1
        # and sigma is large (VP, VE, iDDPM: D = x -+ sigma F); float64 rounding of that sum is a
        # few ulps of its terms, so the error is measured against |c_skip x| + |c_out F*|.
        scale = np.abs(c_skip * x) + np.abs(c_out * f_star)
        ulps = np.max(np.abs(np.asarray(denoised) - d_star) / (np.finfo(np.float64).eps * scale))
        assert ulps < 8, (kind, s, ulps)  # measured: at most 1.9


def test_edm_ideal_raw_network_vanishes_for_data_of_std_sigma_data():
    """With data N(0, sd^2) the exact denoiser is c_skip x itself, so F* = 0."""
    sigma = np.geomspace(0.002, 80, 9)
    x = np.random.default_rng(2).standard_normal((9, 4, 2))
    with jax.enable_x64(True):
        f_star = edm.raw_target("edm", gaussian_denoiser(0.5)(jnp.asarray(x), jnp.asarray(sigma)), jnp.asarray(x), jnp.asarray(sigma))
    np.testing.assert_allclose(f_star, 0.0, atol=1e-15)


# ------------------------------------------------------------------- the loss


@pytest.mark.parametrize("kind", KINDS)
def test_raw_loss_equals_denoiser_loss(kind):
    """lambda c_out^2 ||F - (y - c_skip x)/c_out||^2 = lambda ||D(x; sigma) - y||^2, float64,
    for an arbitrary raw output F."""
    column = edm.get_column(kind)
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        sigma = np.asarray(column.sample_sigma(jax.random.key(0), (8,), jnp.float64))
        y = rng.uniform(-1, 1, (8, 4, 4, 3))
        x = y + sigma[:, None, None, None] * rng.standard_normal(y.shape)
        raw = rng.standard_normal(y.shape)
        ys, xs, ss, fs = jnp.asarray(y), jnp.asarray(x), jnp.asarray(sigma), jnp.asarray(raw)
        denoised = edm.precondition(column, lambda x_in, c_noise: fs)(xs, ss)
        first = jax.jit(lambda *a: edm.raw_loss(column, *a))(fs, ys, xs, ss)
        second = jax.jit(lambda *a: edm.denoiser_loss(column, *a))(denoised, ys, ss)
        weight = np.asarray(column.loss_weight(ss))
    assert first.shape == second.shape == (8,)
    np.testing.assert_allclose(first, second, rtol=1e-14)
    np.testing.assert_allclose(second, weight * np.mean((np.asarray(denoised) - y) ** 2, axis=(1, 2, 3)), rtol=1e-13)


# ---------------------------------------------------- training noise levels


N_DRAWS = 200_000


def test_edm_training_sigma_is_log_normal():
    """ln sigma ~ N(-1.2, 1.2^2): mean within 5 standard errors (1.2/sqrt(N)) and std within
    5 standard errors of a sample std (1.2/sqrt(2N))."""
    log_sigma = np.log(np.asarray(edm.EDMPrecond().sample_sigma(jax.random.key(1), (N_DRAWS,))))
    assert abs(log_sigma.mean() + 1.2) < 5 * 1.2 / math.sqrt(N_DRAWS)
    assert abs(log_sigma.std() - 1.2) < 5 * 1.2 / math.sqrt(2 * N_DRAWS)


def test_ve_and_vp_training_sigma_are_uniform_in_their_variable():
    """VE: ln sigma ~ U(ln 0.02, ln 100); VP: sigma^-1(sigma) ~ U(1e-5, 1). Support, and the
    mean and the fraction below the midpoint within 5 standard errors."""
    cases = {
        "ve": (lambda s: np.log(s), math.log(0.02), math.log(100.0)),
        "vp": (lambda s: np.asarray(edm.VPPrecond().t_of_sigma(jnp.asarray(s, jnp.float64))), 1e-5, 1.0),
    }
    for key_index, (kind, (variable, low, high)) in enumerate(cases.items()):
        with jax.enable_x64(True):
            sigma = np.asarray(edm.get_column(kind).sample_sigma(jax.random.key(2 + key_index), (N_DRAWS,), jnp.float64))
            v = variable(sigma)
        width = high - low
        assert v.min() >= low - 1e-12 * width and v.max() <= high + 1e-12 * width, kind
        assert abs(v.mean() - (low + high) / 2) < 5 * width / math.sqrt(12 * N_DRAWS), kind
        assert abs(np.mean(v < (low + high) / 2) - 0.5) < 5 * 0.5 / math.sqrt(N_DRAWS), kind


def test_iddpm_training_sigma_are_its_table_uniformly():
    column = edm.IDDPMPrecond()
    with jax.enable_x64(True):
        sigma = np.asarray(column.sample_sigma(jax.random.key(4), (N_DRAWS,), jnp.float64))
    u = edm.iddpm_u()
    j = np.searchsorted(-u, -sigma)  # u decreasing
    np.testing.assert_array_equal(u[j], sigma)
    assert j.min() >= 0 and j.max() <= 999
    # the step's mean, (M - 1)/2, within 5 standard errors sqrt((M^2 - 1)/12 / N)
    assert abs(j.mean() - 499.5) < 5 * math.sqrt((1000**2 - 1) / 12 / N_DRAWS)


@pytest.mark.parametrize("kind", ["vp", "ve", "edm"])
@pytest.mark.slow
def test_log_snr_densities(kind):
    """p(lambda) of lambda = -2 ln sigma integrates to 1 (trapezoid on 100_001 points; the
    VE density is flat, so its ends are cut exactly at the support), and, for VP, equals
    1/((1 - eps_t) |d lambda/dt|) with the derivative taken by autodiff of sigma(t)."""
    column = edm.get_column(kind)
    with jax.enable_x64(True):
        if kind == "edm":
            lam = np.linspace(2.4 - 24 * 2.4 / 2, 2.4 + 24 * 2.4 / 2, 100_001)
        elif kind == "ve":
            lam = np.linspace(-2 * math.log(100.0), -2 * math.log(0.02), 100_001)
        else:
            vp = column
            lam_ends = [float(-2 * jnp.log(vp.sigma_of_t(jnp.asarray(t, jnp.float64)))) for t in (1.0, 1e-5)]
            lam = np.linspace(*lam_ends, 100_001)
        density = np.exp(np.asarray(column.log_snr_log_density(jnp.asarray(lam))))
        assert abs(np.trapezoid(density, lam) - 1.0) < 1e-9, np.trapezoid(density, lam)  # measured: 1.2e-11 (VP)
        if kind == "vp":
            t = np.linspace(1e-5, 1.0, 50)
            dlam_dt = jax.vmap(jax.grad(lambda s: -2.0 * jnp.log(column.sigma_of_t(s))))(jnp.asarray(t))
            lam_t = -2.0 * np.log(np.asarray(column.sigma_of_t(jnp.asarray(t))))
            expected = 1.0 / ((1.0 - 1e-5) * np.abs(np.asarray(dlam_dt)))
            np.testing.assert_allclose(np.exp(column.log_snr_log_density(jnp.asarray(lam_t))), expected, rtol=1e-10)
            assert np.exp(float(column.log_snr_log_density(jnp.asarray(lam_ends[1] + 1.0)))) == 0.0
    with pytest.raises(NotImplementedError):
        edm.IDDPMPrecond().log_snr_log_density(jnp.zeros(3))


# ------------------------------------------------------ jit, vmap and shapes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_precondition_shapes_jit_vmap(kind):
    """float32 [4, 8, 8, 3] with sigma [4]; under jit; vmap over examples equals the batch
    call; a scalar sigma broadcasts; extra arguments reach the raw network."""
    seen = {}

    def raw(x_in, c_noise, scale, *, shift):
        seen["shapes"] = (x_in.shape, c_noise.shape)
        return scale * jnp.tanh(x_in) + shift * c_noise[:, None, None, None]

    denoise = edm.precondition(kind, raw)
    x = jax.random.normal(jax.random.key(5), (4, 8, 8, 3))
    sigma = jnp.array([0.01, 0.3, 2.0, 50.0], jnp.float32)
    out = jax.jit(lambda x, s: denoise(x, s, 2.0, shift=0.1))(x, sigma)
    chex.assert_shape(out, (4, 8, 8, 3))
    assert out.dtype == jnp.float32 and seen["shapes"] == ((4, 8, 8, 3), (4,))
    one_by_one = jax.vmap(lambda xi, si: denoise(xi[None], si[None], 2.0, shift=0.1)[0])(x, sigma)
    np.testing.assert_allclose(one_by_one, out, rtol=1e-6, atol=1e-6)
    scalar = denoise(x, 0.3, 2.0, shift=0.1)
    np.testing.assert_allclose(scalar[1], out[1], rtol=1e-6, atol=1e-6)
    chex.assert_tree_all_finite(out)


def test_precondition_errors():
    with pytest.raises(ValueError, match="unknown preconditioning"):
        edm.precondition("ddpm", lambda x, c: x)
    with pytest.raises(ValueError, match="edm column only"):
        edm.precondition("vp", lambda x, c: x, sigma_data=0.5)
    bad = edm.precondition("edm", lambda x, c: x[:, :2])
    with pytest.raises(AssertionError):
        bad(jnp.zeros((2, 4)), jnp.ones(2))
    with pytest.raises(AssertionError):
        edm.precondition("edm", lambda x, c: x)(jnp.zeros((2, 4)), jnp.ones(3))
    assert edm.get_column("edm", sigma_data=0.3).sigma_data == 0.3
