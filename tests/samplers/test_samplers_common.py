"""What every sampler shares: per-sample noise, unchanged numbers, probes on the path's device."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import lazy_instance
from mixture_checks import mixture_oracle
from torch import Tensor

from diffusion_pl.denoiser import batch_times
from diffusion_pl.learned_schedule import LearnedVPPath
from diffusion_pl.likelihood import log_likelihood
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath, VPLinearPath
from diffusion_pl.randomness import sample_generators
from diffusion_pl.samplers import SAMPLERS, EulerSampler, RK45Sampler, Sampler
from diffusion_pl.samplers.sde import PCSampler, euler_maruyama_step

pytestmark = pytest.mark.usefixtures("one_thread")

# Small settings of the samplers that need more than 5 steps to be told (``settings_of``).
SETTINGS = {
    "rk45": {},
    "ddim": {"steps": 5, "eta": 0.5},
    "annealed_langevin": {"steps": 3, "steps_per_level": 2},
    "edm_sde": {"steps": 5, "s_churn": 10.0},
    "consistency": {"steps": 3},
}


def settings_of(name: str) -> dict[str, object]:
    """Small settings of the sampler ``name``: its entry in SETTINGS, else 5 steps."""
    return SETTINGS.get(name, {"steps": 5})


# 4 samples of each sampler of that day on VPLinearPath with the test mixture's oracle, one
# torch.Generator seeded 0: the numbers of main at 8e16c29, before the samplers drew their
# noise through diffusion_pl.randomness and the configs went through one base.
SINGLE_GENERATOR = {
    "euler": [
        [4.406436282450399, -0.14865225577647098], [-5.24187296731115, 0.28796953396680164],
        [-4.6495070156432385, -0.7085340389483129], [-3.482491386157129, 0.42454749719722956],
    ],
    "heun": [
        [4.154329873204949, -0.1601048066894257], [-5.009701361944246, 0.3101554451856252],
        [-4.379340233876825, -0.7631213179117674], [-3.3423456481293194, 0.45725572487411054],
    ],
    "rk45": [
        [4.263585032105218, -0.14667971406810554], [-5.035999632295258, 0.28414832107284976],
        [-4.460814519167878, -0.699132143657038], [-3.5269006689338753, 0.41891396246861456],
    ],
    "euler_maruyama": [
        [-4.655901577570578, -0.11094899737453334], [-4.0267481455780265, -0.07610094684150348],
        [-4.3276709737556995, 0.10830538280199106], [4.51687390703588, 0.19472121008951232],
    ],
    "pc": [
        [3.376280405334823, 0.0030337412248295018], [-4.79555667287366, 0.15331732659224745],
        [-2.5832337626044284, 1.2521277878892667], [3.5654630982097446, -0.8039672658001166],
    ],
    "ddpm": [
        [-3.9309265159173252, 0.2700000194359368], [-4.649336266111911, -0.09620336868790724],
        [-4.167942313204877, -0.12483560974980798], [-3.5881009380987354, -0.313225847221614],
    ],
    "ddim": [
        [-3.4745949201750133, 0.15808289129668446], [-4.854312242821987, -0.11171352729455784],
        [-4.273017144590552, -0.11348402423331272], [-3.641248286960591, -0.023601070706120386],
    ],
    "annealed_langevin": [
        [0.8250792504765578, 0.49549019306656766], [-3.5845771605021794, -0.28213996637510624],
        [-1.5049811280391912, -0.5510208868766588], [0.530010101462469, 0.017865084081948836],
    ],
}  # fmt: skip


class _VelocityAsAverage:
    """An oracle read as a mean-flow model whose "average velocity" over [r, t] is the velocity
    at t (a mean-flow jump is then an Euler step): enough for what every sampler shares."""

    def __init__(self, oracle: GaussianMixtureOracle, path: NoisePath) -> None:
        self.oracle, self.path = oracle, path

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        return self.oracle(x, t)

    def average_velocity(self, x: Tensor, r: Tensor | float, t: Tensor | float) -> Tensor:
        t = batch_times(t, x)
        return self.oracle(x, t).velocity(self.path.coefficients(t, x.ndim)).to(x.dtype)


def denoiser_for(name: str, path: NoisePath) -> GaussianMixtureOracle | _VelocityAsAverage:
    """The test mixture's oracle on ``path``, as the sampler called ``name`` needs it."""
    oracle = mixture_oracle(path)
    return _VelocityAsAverage(oracle, path) if name == "meanflow" else oracle


def test_settings_name_only_samplers_of_the_table() -> None:
    """Every test here and in test_sampler_grids/test_sampler_registry reads SAMPLERS, so a
    new sampler is tested by them as soon as its module exists; SETTINGS holds no stale name."""
    assert set(SETTINGS) <= set(SAMPLERS)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_generator_decides_the_noise_of_exactly_the_stochastic_samplers(name: str) -> None:
    """From one x at ts[0]: one seed gives one answer; another seed another answer for a
    sampler whose table entry says it draws noise (with these settings), the same otherwise."""
    path = VPLinearPath()
    sampler = SAMPLERS[name](**settings_of(name))
    x = path.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))
    ts = sampler.time_grid(path, None)
    a, b, c = (sampler.solver(denoiser_for(name, path), path, x, ts, **sampler.settings(),
                              generator=torch.Generator().manual_seed(seed))
               for seed in (3, 3, 4))  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if type(sampler).randomness == "deterministic":
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    else:
        assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", sorted(SINGLE_GENERATOR))
def test_one_generator_gives_the_numbers_of_before(name: str) -> None:
    path = VPLinearPath()
    sampler = SAMPLERS[name](**settings_of(name))
    x = sampler(mixture_oracle(path), path, (4, 2), generator=torch.Generator().manual_seed(0))
    expected = torch.tensor(SINGLE_GENERATOR[name], dtype=torch.float64)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_per_sample_generators_make_samples_independent_of_the_batch(name: str) -> None:
    """Samples 0–5 in one batch equal samples 0–1 and 2–5 drawn in two batches, row by row.

    Two samplers couple the samples of a batch through one step size, as their references
    do: RK45's error norm is over the whole batch state (score_sde), so rows agree to the
    solver's tolerance; PC's Langevin corrector sets ε from batch-mean norms (Song et al.'s
    code), so PC is checked with the predictor alone (``corrector_steps=0``).
    """
    path = VPLinearPath()
    oracle = denoiser_for(name, path)
    settings = {**settings_of(name), "corrector_steps": 0} if name == "pc" else settings_of(name)
    sampler = SAMPLERS[name](**settings)
    whole = sampler(oracle, path, (6, 2), generator=sample_generators(7, 0, 6))
    parts = [sampler(oracle, path, (n, 2), generator=sample_generators(7, k, n)) for k, n in
             ((0, 2), (2, 4))]  # fmt: skip
    tol = 1e-4 if name == "rk45" else 0.0
    torch.testing.assert_close(whole, torch.cat(parts), rtol=0, atol=tol)
    # Each sample has its own noise: no two rows are equal.
    assert torch.cdist(whole, whole).add(torch.eye(6, dtype=whole.dtype)).min() > 1e-3


class _GuardedPath(LearnedVPPath):
    """A learned schedule that refuses times off its parameters' device or dtype."""

    def gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        p = self.gamma_0
        if (t.dtype, t.device) != (p.dtype, p.device):
            raise AssertionError(
                f"t in {t.dtype} on {t.device}; the path is {p.dtype} on {p.device}"
            )
        return super().gamma_and_slope(t)


class _SameDtype:
    """The exact oracle of ``path``'s schedule, its float64 answers cast to the dtype of x.

    It computes on an unguarded copy of the schedule: only the sampler's calls are checked.
    """

    def __init__(self, path: LearnedVPPath) -> None:
        twin = LearnedVPPath(hidden=path.l2.raw_weight.shape[0]).to(path.gamma_0.dtype)
        twin.load_state_dict(path.state_dict())
        self.oracle = mixture_oracle(twin)

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        pred = self.oracle(x, t)
        return Prediction(x0=pred.x0.to(x.dtype), eps=pred.eps.to(x.dtype))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_learned_schedule_in_float64_sees_only_float64(name: str) -> None:
    """model.double(): the prior, every probe and every step evaluate the path in float64."""
    path = _GuardedPath(hidden=8).double()
    sampler = SAMPLERS[name](**settings_of(name))
    x = sampler(denoiser_for(name, path), path, (4, 2), generator=torch.Generator().manual_seed(0),
                dtype=torch.float64)  # fmt: skip
    assert x.dtype == torch.float64 and torch.isfinite(x).all()


def test_learned_schedule_likelihood_in_float64() -> None:
    path = _GuardedPath(hidden=8).double()
    x = torch.tensor([[-4.0, 0.3], [3.5, -0.2]], dtype=torch.float64)
    ll, _ = log_likelihood(mixture_oracle(path), path, x, divergence="exact")
    assert ll.dtype == torch.float64 and torch.isfinite(ll).all()
    ll, _ = log_likelihood(mixture_oracle(path), path, x, generator=sample_generators(0, 0, 2))
    assert ll.dtype == torch.float64 and torch.isfinite(ll).all()


@pytest.mark.parametrize("sampler", [EulerSampler(steps=4), RK45Sampler(rtol=1e-3, atol=1e-3)],
                         ids=repr)  # fmt: skip
def test_learned_schedule_probes_follow_its_dtype(sampler: Sampler) -> None:
    """A float32 schedule is probed in float32 (and on its device: probes are built from its
    parameters), by the prior, the final-step check, the samplers' checks and prior_logp."""
    path = _GuardedPath(hidden=8)
    x = sampler(_SameDtype(path), path, (4, 2), generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert path.as_time(0.5).dtype == torch.float32
    for name in SAMPLERS:
        SAMPLERS[name](**settings_of(name)).check(path)
    assert path.prior_logp(x).dtype == torch.float32


def test_configs_round_trip_and_show_functions_by_import_path() -> None:
    for name in SAMPLERS:
        settings = settings_of(name)
        sampler = SAMPLERS[name](**settings)
        assert repr(type(sampler)(**vars(sampler))) == repr(sampler)
        if "steps" in settings:
            assert vars(sampler.with_steps(9)) == {**vars(sampler), "steps": 9}
    with pytest.raises(ValueError, match="chooses its own steps"):
        RK45Sampler().with_steps(9)
    pc = PCSampler(steps=3, predictor=euler_maruyama_step)
    assert repr(pc) == (
        "PCSampler(steps=3, predictor=diffusion_pl.samplers.sde.euler_maruyama_step, "
        "corrector_steps=1, snr=0.16, grid=None, denoise_final=True)"
    )


def test_a_lazy_default_samples_and_changes_steps_as_the_real_class() -> None:
    """The formulations' defaults are jsonargparse lazy instances, whose ``vars`` also hold
    their ``_lazy…`` bookkeeping: it is not a setting, and ``with_steps`` builds the real class."""
    path = VPLinearPath()
    lazy, real = lazy_instance(PCSampler, steps=3, snr=0.1), PCSampler(steps=3, snr=0.1)
    a, b = (s(mixture_oracle(path), path, (4, 2), generator=torch.Generator().manual_seed(0))
            for s in (lazy, real))  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert lazy.arguments() == real.arguments()
    assert type(lazy.with_steps(5)) is PCSampler
    assert repr(lazy.with_steps(5)) == repr(real.with_steps(5))
