"""Radiomics-guided CycleGAN and Pix2Pix: networks, losses, gradients, a short run, persistence.

Oracles: NumPy's reflection padding and the PatchGAN's closed-form output size and 70x70
receptive field (Isola et al. 2017); central finite differences in float64 for the RF loss's
gradient; the selected features' relative errors before/after a short run of the whole method (they must
drop by more than half); save/load must harmonize identically.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from phyjax import methods
from phyjax.data.nifti import InputError
from phyjax.data.split import Split
from phyjax.data.volumes import Volume
from phyjax.losses.radiomic import lsgan_discriminator, radiomics_config, rf_loss, soft_dice_loss
from phyjax.methods import cyclegan, pix2pix
from phyjax.models.gan import (
    PatchDiscriminator,
    ResnetGenerator,
    Segmenter,
    UNetGenerator,
    init_params,
    instance_norm,
    reflect_pad,
)
from phyjax.physics.sequences import Protocol


def _blobs(n, size, scale, texture, seed):
    """``n`` images ``(n, size, size, 1)`` of a textured disc (intensity ``scale``) and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    mask = ((yy / (0.4 * size)) ** 2 + (xx / (0.42 * size)) ** 2 < 1).astype(np.float32)
    img = scale * (1.0 + texture * rng.standard_normal((n, size, size)))
    img = np.clip(img, 0.05, 1.9) * mask
    return img[..., None].astype(np.float32), np.broadcast_to(mask[..., None], img.shape + (1,))


# ---------------------------------------------------------------------------------------------
# networks


def test_reflect_pad_matches_numpy_and_excludes_the_edge():
    x = np.arange(12.0).reshape(1, 3, 4, 1)
    got = np.asarray(reflect_pad(jnp.asarray(x), 2))
    np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), "reflect"))
    np.testing.assert_array_equal(got[0, 2, :, 0], [2, 1, 0, 1, 2, 3, 2, 1])  # PyTorch's rule


def test_instance_norm_per_sample_and_channel():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, 6, 3))
    y = np.asarray(instance_norm(jnp.asarray(x), eps=0.0))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=(1, 2)), 1.0, rtol=1e-5)


def test_instance_norm_values_and_gradient_equal_flax(x64):
    """phyjax's instance norm (its gradient written out, ``jax.custom_vjp``) against flax's
    ``nn.InstanceNorm`` without scale and bias (autodiff of the two-pass formula) as the oracle:
    the same values and input gradients, in float64 to 1e-10 and in float32 to 1e-5."""
    from flax import linen as fnn
    oracle = fnn.InstanceNorm(epsilon=1e-5, use_bias=False, use_scale=False)
    rng = np.random.default_rng(3)
    x64_, w64 = rng.normal(2.0, 3.0, (2, 7, 9, 4)), rng.normal(size=(2, 7, 9, 4))
    for dtype, tol in ((jnp.float64, 1e-10), (jnp.float32, 1e-5)):
        x, w = jnp.asarray(x64_, dtype), jnp.asarray(w64, dtype)
        ours = lambda v, w=w: jnp.sum(w * jnp.tanh(instance_norm(v)))
        ref = lambda v, w=w: jnp.sum(w * jnp.tanh(oracle.apply({}, v)))
        np.testing.assert_allclose(np.asarray(instance_norm(x)),
                                   np.asarray(oracle.apply({}, x)), rtol=tol, atol=tol)
        g, g_ref = jax.grad(ours)(x), jax.grad(ref)(x)
        assert g.dtype == dtype
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=tol,
                                   atol=tol * float(jnp.max(jnp.abs(g_ref))))


@pytest.mark.parametrize("stride,padding", [(1, "VALID"), (2, ((1, 1), (1, 1)))])
def test_conv_equals_flax_conv_and_its_cancelled_bias_changes_nothing(stride, padding):
    """:class:`Conv` against flax's ``nn.Conv`` (the oracle): the same parameters (names,
    shapes, initial values) and outputs; with ``bias_cancelled`` (an instance norm follows) the
    normalized output and the kernel gradient equal flax's Conv + norm with a non-zero bias,
    and the bias's gradient, float noise in flax's, is exactly 0."""
    from phyjax.models.gan import Conv
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 12, 14, 3)), jnp.float32)
    from flax import linen as fnn
    ref = fnn.Conv(5, (3, 3), strides=(stride, stride), padding=padding)
    ours = Conv(5, 3, stride, padding)
    p_ref, p_ours = ref.init(jax.random.key(7), x), ours.init(jax.random.key(7), x)
    assert jax.tree.structure(p_ref) == jax.tree.structure(p_ours)
    for u, v in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_ours)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    p = jax.tree.map(lambda u: u + 0.3, p_ref)           # a non-zero bias
    np.testing.assert_allclose(np.asarray(ours.apply(p, x)), np.asarray(ref.apply(p, x)),
                               rtol=1e-5, atol=1e-5)
    cancelled = ours.clone(bias_cancelled=True)
    w = jnp.asarray(np.random.default_rng(5).normal(size=ref.apply(p, x).shape), jnp.float32)
    loss = lambda m: lambda q: jnp.mean(w * jnp.tanh(instance_norm(m.apply(q, x))))
    np.testing.assert_allclose(np.asarray(instance_norm(cancelled.apply(p, x))),
                               np.asarray(instance_norm(ref.apply(p, x))), rtol=1e-4, atol=1e-4)
    g_ref, g = jax.grad(loss(ref))(p), jax.grad(loss(cancelled))(p)
    k_ref, k = g_ref["params"]["kernel"], g["params"]["kernel"]
    assert float(jnp.linalg.norm(k - k_ref) / jnp.linalg.norm(k_ref)) < 1e-4
    assert not np.any(np.asarray(g["params"]["bias"]))
    assert float(jnp.max(jnp.abs(g_ref["params"]["bias"]))) < 1e-5 * float(jnp.max(jnp.abs(k_ref)))


def _shape(net, x):
    """Output shape of ``net`` on ``x`` (init + apply traced once, no compilation)."""
    return jax.eval_shape(lambda v: net.apply(net.init(jax.random.key(0), v), v), x).shape


def test_network_shapes_and_size_errors():
    x = jnp.zeros((2, 24, 32, 3))
    assert _shape(ResnetGenerator(features=4, n_blocks=1, n_down=2), x) == (2, 24, 32, 1)
    assert _shape(UNetGenerator(features=4, depth=3), x) == (2, 24, 32, 1)
    assert _shape(Segmenter(n_classes=3, features=(4, 8)), x) == (2, 24, 32, 3)
    # PatchGAN: three stride-2 4x4 convs (pad 1) halve 96 -> 12, two stride-1 ones take 1 each
    assert _shape(PatchDiscriminator(features=2, n_layers=3), jnp.zeros((1, 96, 64, 1))) \
        == (1, 10, 6, 1)
    with pytest.raises(ValueError, match="multiples of 4"):
        _shape(ResnetGenerator(n_down=2), jnp.zeros((1, 26, 32, 1)))
    with pytest.raises(ValueError, match="multiples of 8"):
        _shape(UNetGenerator(depth=3), jnp.zeros((1, 24, 36, 1)))


@pytest.mark.parametrize("net", [ResnetGenerator(features=4, n_blocks=1, n_down=2),
                                 ResnetGenerator(features=4, n_blocks=1, n_down=2, residual=True),
                                 PatchDiscriminator(features=4, n_layers=3),
                                 UNetGenerator(features=4, depth=3, residual=True)],
                         ids=["resnet", "resnet-residual", "patchgan", "unet-residual"])
def test_phase_transposed_convolutions_equal_flax_layers(net):
    """The transposed convolutions as four stride-1 phase convolutions (the default,
    ``conv_impl="phases"``) against flax's own ``ConvTranspose`` (the oracle,
    ``conv_impl="lax"``): the same parameter tree and initial values, the same outputs and the
    same parameter gradients, to float32 rounding; 3x3 and 4x4 kernels on odd sizes against
    ``lax.conv_transpose`` directly.  (The PatchGAN has no transposed convolution: its case
    checks that the explicitly named layers keep flax's parameter tree.)"""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 40, 48, 1)), jnp.float32)
    oracle = net.clone(conv_impl="lax")
    p_fast = net.init(jax.random.key(1), x)
    p_lax = oracle.init(jax.random.key(1), x)
    assert jax.tree.structure(p_fast) == jax.tree.structure(p_lax)
    for u, v in zip(jax.tree.leaves(p_fast), jax.tree.leaves(p_lax)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # off the initial values: the zero-initialized last layer of a residual generator and the
    # zero biases (cancelled before an instance norm in the fast form, added in flax's)
    p_fast = jax.tree.map(lambda u: u + 0.05, p_fast)
    y_fast, y_lax = net.apply(p_fast, x), oracle.apply(p_fast, x)
    np.testing.assert_allclose(np.asarray(y_fast), np.asarray(y_lax), rtol=1e-4, atol=1e-5)

    def grads(m):
        g = jax.grad(lambda p: jnp.mean(jnp.square(m.apply(p, x) - 0.3)))(p_fast)
        return jax.flatten_util.ravel_pytree(g)[0]

    g_fast, g_lax = grads(net), grads(oracle)
    assert float(jnp.linalg.norm(g_lax)) > 0
    assert float(jnp.linalg.norm(g_fast - g_lax) / jnp.linalg.norm(g_lax)) < 1e-4
    # odd sizes, 3x3 and 4x4 kernels, against lax directly
    from phyjax.models.gan import upsample_conv
    rng = np.random.default_rng(2)
    for h, w, k in ((11, 13, 3), (9, 10, 4), (6, 7, 3)):
        xx = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
        kk = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)
        ref = jax.lax.conv_transpose(xx, kk, (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(np.asarray(upsample_conv(xx, kk)), np.asarray(ref),
                                   rtol=1e-5, atol=1e-5)
    # an unknown implementation is refused by every layer, not replaced by flax's
    with pytest.raises(ValueError, match="conv_impl"):
        net.clone(conv_impl="bogus").init(jax.random.key(1), x)


def test_residual_generators_start_at_the_identity_and_can_leave_it():
    """``residual=True``: an untrained generator returns its input (the centre channel of a
    2.5-D stack) exactly, and the loss gradient reaches the zero-initialized last layer."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 24, 3)), jnp.float32)
    for net, last in ((ResnetGenerator(features=4, n_blocks=1, residual=True), "Conv_3"),
                      (UNetGenerator(features=4, depth=3, residual=True), "ConvTranspose_2")):
        params = init_params(net, 0, x)
        np.testing.assert_array_equal(np.asarray(net.apply({"params": params}, x)),
                                      np.asarray(x[..., 1:2]))
        g = jax.grad(lambda p, net=net: jnp.mean(jnp.square(
            net.apply({"params": p}, x) - 0.5)))(params)
        assert not np.any(np.asarray(params[last]["kernel"]))
        assert float(jnp.max(jnp.abs(g[last]["kernel"]))) > 0


# ---------------------------------------------------------------------------------------------
# losses


def test_soft_dice_and_lsgan_values():
    p = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]).reshape(1, 2, 2, 2)
    q = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5]]).reshape(1, 2, 2, 2)
    # class 0: inter 1 + 0.25, sums 2.5 + 1.5; class 1 the same by symmetry
    np.testing.assert_allclose(float(soft_dice_loss(p, q, eps=0.0)), 1 - 2 * 1.25 / 4.0, 1e-6)
    hard = jax.nn.one_hot(jnp.asarray([[0, 1], [1, 0]]), 2)[None]
    assert float(soft_dice_loss(hard, hard, eps=0.0)) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(float(lsgan_discriminator(jnp.ones(3), jnp.zeros(3))), 0.0)
    np.testing.assert_allclose(float(lsgan_discriminator(jnp.zeros(3), jnp.ones(3))), 1.0)


RF_NAMES = ("firstorder_Mean", "glcm_Idmn", "glrlm_RunEntropy")


def test_rf_loss_gradient_reaches_generator_and_matches_finite_differences(x64):
    """d RF / d params of a tiny generator: nonzero, finite, equal to central differences.

    float64, step h = 1e-4 along a random unit direction of all parameters: the truncation error
    of central differences is ~h^2 |f'''| ~ 1e-8 and the rounding error ~eps |f| / h ~ 1e-12,
    so 1e-5 relative agreement can only fail if the gradient is wrong (a detached feature gives
    zero; a missing chain-rule term gives an O(1) mismatch)."""
    img, mask = _blobs(2, 16, 0.6, 0.2, seed=0)
    img, mask = jnp.asarray(img, jnp.float64), jnp.asarray(mask, jnp.float64)
    gen = ResnetGenerator(features=2, n_blocks=1, n_down=1)
    params = init_params(gen, 0, img)
    rcfg = radiomics_config(RF_NAMES, bin_width=0.1, n_bins=20)
    target = jnp.asarray([1.0, 0.95, 3.0])

    def loss(p):
        harm = cyclegan.to_image(gen.apply({"params": p}, cyclegan.to_net(img, 2.0)), 2.0) * mask
        return rf_loss(harm, mask, RF_NAMES, target, rcfg, temperature=0.5)[0]

    loss = jax.jit(loss)
    g = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in leaves)
    # the first conv's kernel receives gradient (the loss reaches the input side); its bias,
    # which the instance norm after it cancels (and phyjax does not add), exactly none
    assert float(jnp.max(jnp.abs(g["Conv_0"]["kernel"]))) > 0
    assert not np.any(np.asarray(g["Conv_0"]["bias"]))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    gflat = jax.flatten_util.ravel_pytree(g)[0]
    rng = np.random.default_rng(1)
    h = 1e-4
    for _ in range(2):
        v = rng.standard_normal(flat.shape)
        v /= np.linalg.norm(v)
        fd = (loss(unravel(flat + h * v)) - loss(unravel(flat - h * v))) / (2 * h)
        np.testing.assert_allclose(float(jnp.dot(gflat, v)), float(fd), rtol=1e-5, atol=1e-10)


def test_fused_step_equals_unfused_step():
    """Fusing the network calls (concatenated batches) changes no value: instance norm and
    convolutions act per sample."""
    cfg = dict(load_config("cyclegan_radiomics").cyclegan.to_dict(), features=2, n_blocks=1,
               n_down=1, disc_features=2, disc_layers=1)
    gen, disc = cyclegan.make_nets(cfg)
    a, ma = _blobs(2, 8, 0.5, 0.1, seed=3)
    b, mb = _blobs(2, 8, 0.9, 0.1, seed=4)
    batch = {"a": a, "mask_a": ma, "b": b, "mask_b": mb}
    tx = cyclegan.gan_optimizer(cfg)
    out = []
    for fuse in (True, False):
        state = cyclegan.init_state(cfg, gen, disc, (8, 8), 0, tx)
        out.append(cyclegan.make_cyclegan_step(cfg, gen, disc, tx, fuse=fuse)(state, batch))
    (s1, m1), (s2, m2) = out
    for k in m1:                                     # every loss term, to float32 rounding
        np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=1e-5)
    # parameters after one Adam step (size <= lr = 2e-4 per entry): biases that precede an
    # instance norm have a zero gradient up to rounding, which Adam's normalization turns into
    # a step of another size, so parameters agree to half a step only (the loss terms above
    # are what a wrong fusion would change)
    for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# method: domains, fit, persistence


def _training_set(n_subjects=4, shape=(16, 16, 6), second_source=False):
    """Source site ``src`` darker and smoother than the target site ``tgt`` (textured disc);
    ``second_source``: also ``src2``, brighter than the target and smoother still."""
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[3:13, 2:14, 1:5] = True
    vols = {}
    sites = [("src", 0.45, 0.05), ("tgt", 0.9, 0.15)]
    if second_source:
        sites.append(("src2", 1.3, 0.03))
    for i in range(n_subjects):
        s = f"{i:02d}"
        vols[s] = {}
        for k, (site, scale, texture) in enumerate(sites):
            image = scale * (1 + texture * rng.standard_normal(shape)) * mask
            vols[s][site] = Volume(s, site, Protocol(0.02 * (k + 1), 0.004, sequence="spgr"),
                                   image.astype(np.float32), mask, f"/data/sub-{s}_{site}.nii.gz",
                                   affine=np.eye(4), resampled=True)
    split = Split(tuple(sorted(vols))[:-1], (max(vols),))
    return split.training_set(vols, "tgt"), vols


def test_domains_hold_different_subjects():
    train, _ = _training_set(n_subjects=5)
    a, b, _ = cyclegan.domains(train, disjoint=True)
    assert {v.subject for v in a}.isdisjoint({v.subject for v in b})
    assert {v.site for v in a} == {"src"} and {v.site for v in b} == {"tgt"}
    a, b, _ = cyclegan.domains(train, disjoint=False)
    assert {v.subject for v in a} == {v.subject for v in b} == set(train.subjects)


def _config():
    config = load_config("cyclegan_radiomics")
    config.unlock()
    c = config.cyclegan
    c.seg_labels = "roi"   # the mask as label: no HMRF in a unit test
    c.steps, c.seg_steps, c.batch_size, c.rf_batch = 30, 2, 4, 4
    c.learning_rate, c.w_rf, c.w_identity = 2e-3, 10.0, 0.0
    c.rf_classes = ("firstorder", "glcm")       # no GLRLM: a shorter compilation
    c.rf_n_bins = 40
    c.features, c.n_blocks, c.n_down, c.disc_features, c.disc_layers = 4, 1, 1, 4, 2
    p = config.pix2pix
    p.steps, p.depth, p.features, p.disc_features, p.disc_layers = 2, 2, 4, 4, 2
    config.data.min_mask_fraction = 0.5
    return config


def _round_trip(h, volume, folder):
    """Harmonize ``volume``, save, load, harmonize again: identical."""
    out = h.harmonize(volume)
    assert out.shape == volume.image.shape and np.all(np.isfinite(out))
    assert np.all(out[~volume.mask] == 0) and np.ptp(out[volume.mask]) > 0
    again = methods.load(methods.save(h, folder))
    assert type(again) is type(h) and again.fitted_on == h.fitted_on
    np.testing.assert_array_equal(again.harmonize(volume), out)
    return again


def test_cyclegan_fit_moves_selected_features_toward_target_and_round_trips(tmp_path):
    """30 steps of the whole method (frozen segmenters with Dice, RF loss, LSGAN, cycle) per
    source site, one darker and one brighter than the target: the relative errors of the
    selected features on each site's source slices drop by more than half; each site has its
    own generator, a scan of a site without one is refused, a target-site scan is returned as it
    is; the saved harmonizer harmonizes identically."""
    train, vols = _training_set(second_source=True)
    h = methods.fit("cyclegan_radiomics", _config(), train, workdir=str(tmp_path / "cg"),
                    progress=False)
    rf = h.rf
    assert set(h.params) == {"src", "src2"} == set(rf["relerr_per_site"])
    assert 1 <= len(rf["features"]) <= 5
    for site, e in rf["relerr_per_site"].items():
        before, after = np.mean(e["before"]), np.mean(e["after"])
        print(f"{site}: selected {rf['features']}: relative error {before:.3f} -> {after:.3f}")
        assert before > 0.1 and after < 0.5 * before
    test = vols[max(vols)]
    # the two generators differ: the darker site is brightened, the brighter one darkened
    gain = {site: np.mean(h.harmonize(test[site])[test[site].mask])
            / np.mean(test[site].image[test[site].mask]) for site in ("src", "src2")}
    assert gain["src"] > 1.0 > gain["src2"]
    other = Volume(test["src"].subject, "elsewhere", test["src"].protocol, test["src"].image,
                   test["src"].mask, "/data/other.nii.gz", affine=np.eye(4), resampled=True)
    with pytest.raises(InputError, match="elsewhere"):
        h.harmonize(other)
    target = test["tgt"]                       # already at the target site: unchanged
    np.testing.assert_array_equal(h.harmonize(target),
                                  np.where(target.mask, target.image, 0).astype(np.float32))
    again = _round_trip(h, test["src2"], str(tmp_path / "cg" / "harmonizer"))
    assert again.rf["features"] == rf["features"]


def test_pix2pix_fit_and_round_trip(tmp_path):
    train, vols = _training_set(n_subjects=3)
    h = methods.fit("pix2pix", _config(), train, workdir=str(tmp_path / "p2p"), progress=False)
    _round_trip(h, vols[max(vols)]["src"], str(tmp_path / "p2p" / "harmonizer"))


def test_bad_settings_are_refused():
    config = _config()
    config.cyclegan.seg_labels = "organs"
    with pytest.raises(ValueError, match="seg_labels"):
        cyclegan.cyclegan_config(config)
    config = _config()
    config.pix2pix.depth = 0
    with pytest.raises(ValueError, match="pix2pix.depth"):
        pix2pix.pix2pix_config(config)


def test_gan_schedule_is_constant_then_linear_to_zero():
    schedule = cyclegan.gan_schedule({"steps": 100, "learning_rate": 2e-4})
    np.testing.assert_allclose([float(schedule(i)) for i in (0, 49, 50, 75, 100)],
                               [2e-4, 2e-4, 2e-4, 1e-4, 0.0], atol=1e-12)
