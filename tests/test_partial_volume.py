"""Two-tissue partial-volume re-synthesis (phyjax.physics.partial_volume) against the data
generator's own signal-level mixing (phyjax.data.synthetic.signed_image, an independent code
path), the single-tissue signal equation for pure voxels, and PhyCHarm's wiring of it."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phyjax.data import synthetic
from phyjax.data.nifti import InputError
from phyjax.models.phycharm import PhyCHarm, synthesize_maps
from phyjax.physics import signal
from phyjax.physics.partial_volume import (mixture_signed_signal, mixture_synthesize,
                                           two_tissue_fractions)
from phyjax.physics.sequences import Protocol
from phyjax.physics.tissues import convert_t1, tissue_array

PROTOCOLS = {
    "mprage_readout": Protocol(tr=2.3, te=0.003, ti=0.9, flip_angle=np.deg2rad(9.0),
                               field_strength=3.0, tr_readout=0.0071, n_readouts=176.0,
                               sequence="mprage"),
    "mprage_static": Protocol(tr=2.4, te=0.003, ti=1.0, field_strength=3.0, sequence="mprage"),
    "spgr": Protocol(tr=0.02, te=0.0045, flip_angle=np.deg2rad(25.0), field_strength=3.0,
                     sequence="spgr"),
    "se_1p5": Protocol(tr=0.55, te=0.014, flip_angle=np.pi / 2, field_strength=1.5,
                       sequence="se"),
}


def _two_tissue_head(field_strength, n=41):
    """Voxels along a WM -> GM -> CSF ramp: fractions (3, 2n - 1) with two tissues at most."""
    f = np.linspace(0.0, 1.0, n, dtype=np.float32)
    z = np.zeros_like(f)
    wm_gm = np.stack([z, f, 1 - f])              # csf, gm, wm
    gm_csf = np.stack([f[1:], 1 - f[1:], z[1:]])
    fractions = np.concatenate([wm_gm, gm_csf], axis=1)
    table = tissue_array(field_strength).astype(np.float32)
    table[:, 1:3] = np.inf                        # T2/T2* folded into M0, as PhyCHarm models it
    t1 = fractions.T @ table[:, 0]
    pd = fractions.T @ table[:, 3]
    maps = {"t1": t1, "pd": pd, "fractions": fractions, "tissue_table": table,
            "t1_texture": np.ones_like(t1), "t2": np.full_like(t1, np.inf),
            "t2star": np.full_like(t1, np.inf)}
    return fractions, t1, pd, maps


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_mixture_matches_the_generators_signal_level_mixing(name):
    """Mean-T1 and M0 maps of two-tissue voxels give back the data generator's signal of the
    mixture (synthetic.signed_image sums each tissue's signal); the single-T1 equation of the
    same maps does not (the bias the two-tissue model removes)."""
    p = PROTOCOLS[name]
    _, t1, pd, maps = _two_tissue_head(p.field_strength)
    truth = np.asarray(synthetic.signed_image(maps, p))
    mixed = np.asarray(mixture_signed_signal(p, jnp.asarray(t1), jnp.asarray(pd),
                                             p.field_strength))
    np.testing.assert_allclose(mixed, truth, rtol=2e-5, atol=2e-6 * np.abs(truth).max())
    single = np.asarray(signal.signed_signal(p, t1, jnp.inf, jnp.inf, pd))
    assert np.abs(single - truth).max() > 0.02 * np.abs(truth).max()


def test_fractions_invert_the_mean_t1():
    for b0 in (1.5, 3.0, 7.0):
        fractions, t1, _, _ = _two_tissue_head(b0)
        got, scale = two_tissue_fractions(jnp.asarray(t1), b0)
        np.testing.assert_allclose(np.asarray(got), fractions, atol=2e-5)
        np.testing.assert_allclose(np.asarray(scale), 1.0, atol=1e-5)
    # beyond the table: one tissue, T1 scaled
    table = tissue_array(3.0)[:, 0]
    got, scale = two_tissue_fractions(jnp.array([0.5 * table[2], 1.2 * table[0]]), 3.0)
    np.testing.assert_allclose(np.asarray(got), [[0, 1], [0, 0], [1, 0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(scale), [0.5, 1.2], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_pure_tissue_is_the_single_tissue_signal_at_the_protocols_field(name):
    """A one-tissue voxel is the single-T1 signal of its T1 converted to the protocol's B0
    (convert_t1, a second method); beyond WM's or CSF's T1 that tissue's T1 is scaled by the
    same ratio at the protocol's B0 (convert_t1 extrapolates linearly instead: the same at one
    B0)."""
    p = PROTOCOLS[name]
    table, there = tissue_array(3.0), tissue_array(p.field_strength)
    t1 = jnp.array([table[2, 0], table[1, 0], table[0, 0]])
    m0 = jnp.array([table[2, 3], table[1, 3], table[0, 3]])
    got = np.asarray(mixture_synthesize(p, t1, m0, 3.0))
    want = np.asarray(signal.synthesize(p, convert_t1(t1, 3.0, p.field_strength), jnp.inf,
                                        jnp.inf, m0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    beyond = jnp.array([0.7 * table[2, 0], 1.1 * table[0, 0]])
    got = np.asarray(mixture_synthesize(p, beyond, jnp.array([0.5, 1.2]), 3.0))
    want = np.asarray(signal.synthesize(p, jnp.array([0.7 * there[2, 0], 1.1 * there[0, 0]]),
                                        jnp.inf, jnp.inf, jnp.array([0.5, 1.2])))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    if p.field_strength == 3.0:
        np.testing.assert_allclose(got, np.asarray(signal.synthesize(
            p, convert_t1(beyond, 3.0, 3.0), jnp.inf, jnp.inf, jnp.array([0.5, 1.2]))),
            rtol=1e-5)


def test_across_field_strengths_each_tissue_takes_the_protocols_table():
    """Maps at 3 T imaged at 1.5 T: a GM/CSF voxel is the mix of 1.5 T GM and CSF signals."""
    p = PROTOCOLS["se_1p5"]
    t3, t15 = tissue_array(3.0), tissue_array(1.5)
    f = 0.3   # CSF share
    t1 = f * t3[0, 0] + (1 - f) * t3[1, 0]
    m0 = f * t3[0, 3] + (1 - f) * t3[1, 3]
    got = float(mixture_signed_signal(p, jnp.float32(t1), jnp.float32(m0), 3.0))
    want = (f * float(signal.spin_echo(t15[0, 0], np.inf, t15[0, 3], p.tr, p.te))
            + (1 - f) * float(signal.spin_echo(t15[1, 0], np.inf, t15[1, 3], p.tr, p.te)))
    assert got == pytest.approx(want, rel=1e-5)


def test_mixture_is_differentiable_and_traceable():
    p = PROTOCOLS["mprage_readout"]

    @jax.jit
    def f(t1, b0):
        return jnp.sum(mixture_synthesize(p, t1, jnp.full_like(t1, 0.8), b0))

    t1 = jnp.linspace(0.6, 5.0, 50)
    g = jax.grad(f)(t1, jnp.float32(3.0))
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(f(t1, 3.0)) == pytest.approx(float(jnp.sum(mixture_synthesize(
        p, t1, jnp.full_like(t1, 0.8), 3.0))), rel=1e-6)
    with pytest.raises(ValueError, match="No tissue relaxation table"):
        two_tissue_fractions(t1, 1.0)


def test_phycharm_resynthesis_uses_the_two_tissue_model():
    """The network's re-synthesis is the two-tissue image of its own maps at the source B0."""
    model = PhyCHarm(features=(4, 8), cond_features=4, partial_volume="two_tissue")
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    mask = jnp.ones((2, 8, 8, 1))
    code = jnp.zeros((2, 12))
    target = PROTOCOLS["mprage_readout"]
    params = model.init(jax.random.key(1), x, mask, code, code, target, 0.5, 1.5)
    out = model.apply(params, x, mask, code, code, target, 0.5, jnp.array([1.5, 3.0]))
    for b, b0 in enumerate((1.5, 3.0)):
        want = mixture_synthesize(target, out["t1"][b], out["m0"][b], b0) / 0.5
        np.testing.assert_allclose(np.asarray(out["resynth"][b]), np.asarray(want), rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="partial_volume"):
        synthesize_maps(target, out["t1"], out["m0"], 3.0, "three_tissue")


def test_config_checks():
    from phyjax.methods import phycharm

    with pytest.raises(InputError, match="partial_volume"):
        phycharm.make_model({"features": (4, 8), "cond_features": 4, "t1_max": 5.0,
                             "m0_max": 1.5, "partial_volume": "mixed"})


@pytest.mark.parametrize("partial_volume", ["single", "two_tissue"])
def test_training_loss_physics_terms_use_the_models_voxel_model(partial_volume):
    """The source term re-synthesizes the source through the model's own voxel model
    (mixture_synthesize for two_tissue, the signal equation for single); the target term
    compares the network's re-synthesis with the target scan -- each the scale-free
    physics_consistency, recomputed here from the network's outputs."""
    from phyjax.losses import physics_consistency
    from phyjax.methods import phycharm

    model = phycharm.make_model(dict(features=(4, 8), cond_features=4, t1_max=5.0, m0_max=1.5,
                                     partial_volume=partial_volume))
    params = phycharm.init_params(model, (16, 16), 1, 0)
    b = conftest.tiny_slice_batch()
    mask = b["mask"]
    src = PROTOCOLS["spgr"]
    tgt = PROTOCOLS["mprage_readout"]
    loss = phycharm.make_loss(model)
    only = {k: {w: np.float32(w == k) for w in phycharm.WEIGHTS}
            for k in ("w_physics", "w_target_physics")}
    from phyjax.physics.sequences import encode
    code = np.broadcast_to(np.asarray(encode(src)), (2, len(encode(src))))
    code_t = np.broadcast_to(np.asarray(encode(tgt)), code.shape)
    out = model.apply({"params": params}, b["source"], mask, code, code_t, tgt, 0.5,
                      src.field_strength)
    if partial_volume == "two_tissue":
        r_src = mixture_synthesize(src, out["t1"], out["m0"], src.field_strength)
    else:
        r_src = signal.synthesize(src, out["t1"], jnp.inf, jnp.inf, out["m0"])
    want = physics_consistency(b["source"][..., 1:2], r_src, mask)
    got = loss(params, b, src, tgt, 0.5, only["w_physics"])[0]
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    want = physics_consistency(b["target"], out["resynth"], mask)
    got = loss(params, b, src, tgt, 0.5, only["w_target_physics"])[0]
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert float(want) > 0.01


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_one_evaluation_path_equals_the_three_tissue_sum(name):
    """A scalar B1+ takes the path with one evaluation of the signal equation per voxel (the
    pure tissues' signals once per protocol); a B1+ map takes the plain sum over the three
    tissues. Same values and gradients, voxels beyond WM's and CSF's T1 (a scaled pure
    tissue) included -- and on both sides of the maps' and the protocol's B0."""
    p = PROTOCOLS[name]
    rng = np.random.default_rng(3)
    t1 = jnp.asarray(rng.uniform(0.3, 6.0, 400), jnp.float32)   # below WM .. beyond CSF
    m0 = jnp.asarray(rng.uniform(0.5, 1.1, 400), jnp.float32)
    maps_b0 = 3.0 if p.field_strength == 1.5 else 1.5           # maps at another B0

    def total(t1, m0, b1):
        return jnp.sum(mixture_signed_signal(p, t1, m0, maps_b0, b1) ** 2)

    fast = mixture_signed_signal(p, t1, m0, maps_b0, 1.0)
    plain = mixture_signed_signal(p, t1, m0, maps_b0, jnp.ones_like(t1))
    np.testing.assert_allclose(np.asarray(fast), np.asarray(plain), rtol=1e-5,
                               atol=1e-6 * float(jnp.abs(plain).max()))
    g_fast = jax.grad(total, argnums=(0, 1))(t1, m0, 1.0)
    g_plain = jax.grad(total, argnums=(0, 1))(t1, m0, jnp.ones_like(t1))
    for a, b in zip(g_fast, g_plain):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4,
                                   atol=2e-5 * float(jnp.abs(b).max()))
