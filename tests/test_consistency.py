"""Data consistency of predicted maps with their source image (phyjax.physics.consistency) and
its use in PhyCHarm's inference (phyjax.methods.phycharm.refine_outputs).

Oracles: the SPGR steady state transcribed in NumPy with finite-difference Jacobians; the
posterior mode of the linear-Gaussian model solved in information form (the code uses the
Kalman form); a bracketing root finder (scipy.optimize.brentq) for the noise-free inversion."""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from phyjax.data.nifti import InputError
from phyjax.methods import phycharm
from phyjax.physics import consistency, convert_t1, signal
from phyjax.physics.partial_volume import mixture_synthesize
from phyjax.physics.sequences import Protocol

SPGR = Protocol(tr=0.02, te=0.0045, flip_angle=float(np.deg2rad(25.0)), field_strength=3.0,
                sequence="spgr")
MPRAGE = Protocol(tr=2.3, te=0.003, ti=0.9, flip_angle=float(np.deg2rad(9.0)),
                  tr_readout=0.0071, n_readouts=176.0, sequence="mprage")


def spgr_numpy(t1, m0, tr=0.02, alpha=np.deg2rad(25.0)):
    """RF-spoiled GRE steady state, T2* folded into M0 (Ernst & Anderson 1966)."""
    e1 = np.exp(-tr / t1)
    return m0 * np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1)


def test_one_step_is_the_linear_gaussian_posterior_mode():
    rng = np.random.default_rng(0)
    t1p = rng.uniform(0.6, 3.0, 50)
    m0p = rng.uniform(0.6, 1.0, 50)
    gain = rng.uniform(0.5, 2.0, 50)
    y = gain * spgr_numpy(t1p * rng.uniform(0.8, 1.2, 50), m0p * rng.uniform(0.9, 1.1, 50))
    t1_sd, m0_sd, noise = 0.15, 0.08, 0.02
    got_t1, got_m0 = consistency.map_update(SPGR, y, t1p, m0p, gain, t1_sd=t1_sd, m0_sd=m0_sd,
                                            noise=noise, iterations=1)
    h = 1e-6
    for i in range(50):
        s = spgr_numpy(t1p[i], m0p[i])
        jac = gain[i] * np.array([(spgr_numpy(t1p[i] + h, m0p[i]) - s) / h,
                                  (spgr_numpy(t1p[i], m0p[i] + h) - s) / h])
        prior_info = np.diag([1 / (t1_sd * t1p[i]) ** 2, 1 / (m0_sd * m0p[i]) ** 2])
        info = np.outer(jac, jac) / noise ** 2 + prior_info
        step = np.linalg.solve(info, jac * (y[i] - gain[i] * s) / noise ** 2)
        np.testing.assert_allclose([got_t1[i], got_m0[i]], [t1p[i] + step[0], m0p[i] + step[1]],
                                   rtol=2e-4)


def test_noise_free_with_a_tight_m0_prior_inverts_the_signal_equation():
    # M0 known (tiny prior sd), negligible noise, a loose T1 prior: the MAP T1 solves
    # y = g S(T1, M0) -- the root found independently by bracketing.
    t1_true = np.array([0.7, 0.9, 1.2, 1.6, 2.5])
    m0 = np.array([0.7, 0.75, 0.8, 0.85, 0.95])
    y = 1.3 * spgr_numpy(t1_true, m0)
    t1_start = t1_true * np.array([1.25, 0.8, 1.2, 0.85, 1.15])
    got, got_m0 = consistency.map_update(SPGR, y, t1_start, m0, 1.3, t1_sd=10.0, m0_sd=1e-6,
                                         noise=1e-7, iterations=20)
    for i in range(5):
        root = optimize.brentq(lambda t: 1.3 * spgr_numpy(t, m0[i]) - y[i], 0.1, 6.0)
        assert got[i] == pytest.approx(root, rel=1e-3)
    np.testing.assert_allclose(got_m0, m0, rtol=1e-5)


@pytest.mark.parametrize("protocol", [SPGR, MPRAGE], ids=["spgr", "mprage"])
def test_the_prior_wins_where_the_image_cannot_tell(protocol):
    t1p = jnp.linspace(0.7, 3.5, 20)
    m0p = jnp.full(20, 0.8)
    y = jnp.full(20, 0.5)
    # a very noisy image, or no gain (no data): the maps stay the network's
    for kwargs in ({"gain": jnp.ones(20), "noise": 1e6}, {"gain": jnp.zeros(20), "noise": 0.03}):
        t1, m0 = consistency.map_update(protocol, y, t1p, m0p, kwargs["gain"],
                                        noise=kwargs["noise"])
        np.testing.assert_allclose(t1, t1p, rtol=1e-5)
        np.testing.assert_allclose(m0, m0p, rtol=1e-5)
    # an informative image moves them toward the data: a brighter voxel under T1 weighting
    # means shorter T1 (SPGR and MPRAGE at these values both brighten with shorter T1)
    s = jnp.asarray(consistency._signal_and_jacobian(protocol, t1p, m0p)[0])
    t1, _ = consistency.map_update(protocol, 1.1 * s, t1p, m0p, jnp.ones(20), noise=1e-3)
    assert np.all(np.asarray(t1) < np.asarray(t1p))


def test_one_step_under_a_two_tissue_forward_model_is_its_posterior_mode():
    # map_update(forward=...): the same Kalman form with the voxel model of two-tissue voxels
    # (mean T1 read as the WM/GM or GM/CSF mixture it stands for); the oracle solves the
    # information form with central finite differences of that forward model.  T1s kept away
    # from the table's tissue T1s (3 T: WM 0.81, GM 1.35, CSF 4.2 s), where the model has kinks.
    rng = np.random.default_rng(3)
    t1p = np.concatenate([rng.uniform(0.9, 1.25, 15), rng.uniform(1.5, 3.8, 15)])
    m0p = rng.uniform(0.6, 1.0, 30)
    gain = rng.uniform(0.5, 2.0, 30)

    def forward(t1_, m0_):
        return mixture_synthesize(MPRAGE, t1_, m0_, 3.0)

    y = gain * np.asarray(forward(jnp.asarray(t1p * rng.uniform(0.95, 1.05, 30)),
                                  jnp.asarray(m0p * rng.uniform(0.9, 1.1, 30))))
    t1_sd, m0_sd, noise = 0.15, 0.08, 0.02
    got_t1, got_m0 = consistency.map_update(MPRAGE, y, t1p, m0p, gain, t1_sd=t1_sd,
                                            m0_sd=m0_sd, noise=noise, iterations=1,
                                            forward=forward)

    def f(t, m):
        return float(forward(jnp.float32(t), jnp.float32(m)))

    h = 1e-3
    for i in range(30):
        s = f(t1p[i], m0p[i])
        jac = gain[i] * np.array([(f(t1p[i] + h, m0p[i]) - f(t1p[i] - h, m0p[i])) / (2 * h),
                                  (f(t1p[i], m0p[i] + h) - f(t1p[i], m0p[i] - h)) / (2 * h)])
        info = np.outer(jac, jac) / noise ** 2 + np.diag([1 / (t1_sd * t1p[i]) ** 2,
                                                         1 / (m0_sd * m0p[i]) ** 2])
        step = np.linalg.solve(info, jac * (y[i] - gain[i] * s) / noise ** 2)
        np.testing.assert_allclose([got_t1[i], got_m0[i]], [t1p[i] + step[0], m0p[i] + step[1]],
                                   rtol=2e-3)
    # the check can tell the voxel models apart: the default (one tissue) misses this oracle
    # by 5x its tolerance
    single_t1, _ = consistency.map_update(MPRAGE, y, t1p, m0p, gain, t1_sd=t1_sd, m0_sd=m0_sd,
                                          noise=noise, iterations=1)
    assert np.max(np.abs(np.asarray(single_t1) / np.asarray(got_t1) - 1.0)) > 5 * 2e-3


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="iterations"):
        consistency.map_update(SPGR, 1.0, 1.0, 1.0, 1.0, iterations=0)
    with pytest.raises(ValueError, match="noise"):
        consistency.map_update(SPGR, 1.0, 1.0, 1.0, 1.0, noise=0.0)
    with pytest.raises(ValueError, match="sigma"):
        consistency.local_gain(np.ones((4, 4, 4)), np.ones((4, 4, 4)), np.ones((4, 4, 4)), 0.0)
    with pytest.raises(InputError, match="unknown"):
        phycharm.refine_settings({"enabled": True, "t1sd": 0.1})
    with pytest.raises(InputError, match="noise"):
        phycharm.refine_settings({"noise": -1.0})
    assert phycharm.refine_settings(None)["enabled"] is False   # a model saved before: off


def test_local_gain_recovers_a_smooth_field_and_nothing_finer():
    rng = np.random.default_rng(1)
    shape = (40, 40, 20)
    x = np.arange(shape[0])[:, None, None] / shape[0]
    field = 0.8 + 0.4 * x * np.ones(shape)                        # linear receive field
    s = rng.uniform(0.3, 1.0, shape)                              # tissue-level detail
    mask = np.zeros(shape, bool)
    mask[5:35, 5:35, 3:17] = True
    g = consistency.local_gain(field * s, s, mask, 4.0)
    inner = np.zeros(shape, bool)
    inner[12:28, 12:28, 7:13] = True
    np.testing.assert_allclose(g[inner], field[inner], rtol=0.01)
    # detail of the image that the synthesis lacks is not absorbed into the gain
    detail = 1.0 + 0.3 * np.sign(rng.standard_normal(shape))
    g2 = consistency.local_gain(field * s * detail, s, mask, 4.0)
    assert np.std(g2[inner] / field[inner]) < 0.1 * np.std(detail[inner])


def _phantom():
    """A slab with a thin bright (short-T1) stripe the 'network' blurred away."""
    shape = (24, 24, 8)
    t1 = np.full(shape, 1.4, np.float32)
    t1[10:12, 4:20, :] = 0.85                    # two voxels of white matter in grey matter
    m0 = np.full(shape, 0.8, np.float32)
    m0[10:12, 4:20, :] = 0.7
    blur = np.full(shape, 1.4, np.float32)
    blur[8:14, 4:20, :] = 1.4 - (1.4 - 0.85) / 3  # the same T1 deficit spread over 6 voxels
    mask = np.zeros(shape, bool)
    mask[2:22, 2:22, :] = True
    return t1, m0, blur, mask


def _voxel_model(partial_volume):
    """``S(protocol, t1, m0)`` of maps at 3 T under a voxel model, written out here: one tissue
    of the T1 converted to the protocol's B0, or the two-tissue mixture."""
    def single(protocol, t1_, m0_):
        t = convert_t1(jnp.asarray(t1_), 3.0, protocol.field_strength)
        return np.asarray(signal.synthesize(protocol, t, jnp.inf, jnp.inf, jnp.asarray(m0_)))

    def two_tissue(protocol, t1_, m0_):
        return np.asarray(mixture_synthesize(protocol, jnp.asarray(t1_), jnp.asarray(m0_), 3.0))

    return {"single": single, "two_tissue": two_tissue}[partial_volume]


@pytest.mark.parametrize("partial_volume", ["single", "two_tissue"])
def test_refine_outputs_puts_the_detail_back_with_the_target_contrast(partial_volume):
    # The scan is made under the model's voxel model, and the step fits with the same one
    # (config.model.partial_volume): one tissue per voxel, or two-tissue voxels.
    t1, m0, t1_net, mask = _phantom()
    target = Protocol(tr=2.4, te=0.00222, ti=1.0, flip_angle=float(np.deg2rad(8.0)),
                      tr_readout=0.0076, n_readouts=256.0, field_strength=1.5,
                      sequence="mprage")
    source = SPGR
    gain = 2.0
    model = _voxel_model(partial_volume)
    image = gain * model(source, t1, m0)
    ref = phycharm.reference_level(target)

    def target_of(t1_, m0_):
        return model(target, t1_, m0_) / ref * mask

    net = {"t1": t1_net, "m0": m0, "resynth": target_of(t1_net, m0)}
    net["harmonized"] = net["resynth"] + 0.01 * mask           # the harmonizer's own residual
    volume = types.SimpleNamespace(protocol=source, mask=mask, image=image.astype(np.float32),
                                   grid_affine=lambda: np.diag([2.0, 2.0, 2.0, 1.0]))
    cfg = {"readout": "sidecar", "t1_max": 5.0, "m0_max": 1.5, "partial_volume": partial_volume}
    settings = phycharm.refine_settings({"enabled": True, "noise": 0.005, "t1_sd": 0.3})
    out = phycharm.refine_outputs(net, volume, target, ref, settings, cfg)
    truth = target_of(t1, m0)

    def err(x):
        return float(np.sqrt(np.mean((x - truth)[mask] ** 2)))

    assert err(out["resynth"]) < 0.5 * err(net["resynth"])
    if partial_volume == "two_tissue":
        # a two-tissue model's maps through the one-tissue fit do worse: it explains the source
        # with the wrong signal equation and moves the target by the wrong one
        wrong = phycharm.refine_outputs(net, volume, target, ref, settings,
                                        dict(cfg, partial_volume="single"))
        assert err(out["resynth"]) < 0.8 * err(wrong["resynth"])
    assert np.mean(np.abs(out["t1"] - t1)[mask]) < 0.5 * np.mean(np.abs(t1_net - t1)[mask])
    # the harmonizer's residual is kept: harmonized - resynth unchanged
    np.testing.assert_allclose(out["harmonized"] - out["resynth"], 0.01 * mask, atol=1e-6)
    np.testing.assert_array_equal(out["t1_network"], t1_net)
    # the stripe is back: its centre is brighter than its flanks, as in the truth
    centre, flank = out["resynth"][10:12, 8:16].mean(), out["resynth"][8, 8:16].mean()
    assert centre - flank > 0.5 * (truth[10:12, 8:16].mean() - truth[8, 8:16].mean())
    assert np.all(out["harmonized"][~mask] == 0)
    # a gated model (config.model.base=gated) holds the re-synthesis with weight g: its output
    # moves by g times the re-synthesis' change, the source's share stays
    g = np.where(mask, np.linspace(0.2, 0.9, mask.shape[0])[:, None, None], 0.0)
    gated = phycharm.refine_outputs(dict(net, gate=g), volume, target, ref, settings, cfg)
    np.testing.assert_allclose(gated["resynth"], out["resynth"], atol=1e-6)
    np.testing.assert_allclose(gated["harmonized"] - net["harmonized"],
                               g * (out["resynth"] - net["resynth"]), atol=1e-6)
    assert float(np.max(np.abs(out["resynth"] - net["resynth"]))) > 0.05
