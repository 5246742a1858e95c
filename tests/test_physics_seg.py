"""Physics-aware segmentation (Borges et al. 2019): branch, gold standard, loss, bridging, and a
debug-size run through ``phyjax.main`` followed by segment mode on a NIfTI + sidecar."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, load_config
from scipy import stats

from phyjax.data.nifti import InputError
from phyjax.data.sidecar import protocol_to_sidecar
from phyjax.physics.sequences import Protocol
from phyjax.segment import evaluate, gold
from phyjax.segment.model import (
    EXTENDED_SIZE,
    PHYSICS_SIZE,
    READOUT_SLICE,
    SegmentationUNet,
    extended_vector,
    physics_vector,
)
from phyjax.segment.train import soft_dice_loss

MPRAGE_EARLY = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.6)
MPRAGE_LATE = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=1.2)


def test_physics_vector_holds_the_parameters_and_their_negative_exponentials():
    spgr = Protocol.from_degrees("spgr", tr=0.02, te=0.005, flip_angle_deg=30.0)
    v = physics_vector(spgr)
    assert v.shape == (PHYSICS_SIZE,)
    # exp(-TR/T1) at the 3 T WM, GM, CSF T1 (0.81, 1.35, 4.2 s), then exp(-TI/T1) = 0 (no TI)
    np.testing.assert_allclose(v[10:13], np.exp(-0.02 / np.array([0.81, 1.35, 4.2])), rtol=1e-6)
    np.testing.assert_allclose(v[13:16], 0.0)
    np.testing.assert_allclose(physics_vector(MPRAGE_EARLY)[13:16],
                               np.exp(-0.6 / np.array([0.81, 1.35, 4.2])), rtol=1e-6)
    np.testing.assert_allclose(v[18:20], [np.sin(np.pi / 6), np.cos(np.pi / 6)], rtol=1e-6)
    # the MPRAGE readout train: 100 x readout TR (s), readouts per shot / 256; 0 for SPGR
    np.testing.assert_array_equal(v[READOUT_SLICE], 0.0)
    train = MPRAGE_EARLY.replace(tr_readout=0.0065, n_readouts=192.0)
    np.testing.assert_allclose(physics_vector(train)[READOUT_SLICE], [0.65, 0.75], rtol=1e-6)


def test_branch_shapes_2d_and_3d():
    # shapes only: jax.eval_shape traces init/apply without compiling or running them
    params = jnp.stack([physics_vector(MPRAGE_EARLY), physics_vector(MPRAGE_LATE)])
    model = SegmentationUNet(features=(4, 8, 16), branch_width=8)
    x = jnp.ones((2, 16, 20, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x, params)
    p = variables["params"]
    assert p["branch_dense_0"]["kernel"].shape == (PHYSICS_SIZE, 8)
    assert p["branch_dense_1"]["kernel"].shape == (8, 8)
    # one projection per decoder level, to that level's width (deepest first)
    assert p["branch_to_decoder_0"]["kernel"].shape == (8, 8)
    assert p["branch_to_decoder_1"]["kernel"].shape == (8, 4)
    assert jax.eval_shape(model.apply, variables, x, params).shape == (2, 16, 20, 3)
    plain = SegmentationUNet(features=(4, 8, 16), physics=False)
    plain_vars = jax.eval_shape(plain.init, jax.random.key(0), x)
    assert not any(k.startswith("branch") for k in plain_vars["params"])
    model3d = SegmentationUNet(features=(4, 8), branch_width=8, ndim=3)
    x3 = jnp.ones((2, 8, 8, 6, 1))
    v3 = jax.eval_shape(model3d.init, jax.random.key(1), x3, params)
    assert v3["params"]["ConvBlock_0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 1, 4)
    assert jax.eval_shape(model3d.apply, v3, x3, params).shape == (2, 8, 8, 6, 3)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(model.apply, variables, jnp.ones((2, 15, 20, 3)), params)
    with pytest.raises(ValueError, match="acquisition parameters"):
        jax.eval_shape(model.apply, variables, x)


def test_film_branch_shapes_and_standardization():
    params = jnp.stack([physics_vector(MPRAGE_EARLY), physics_vector(MPRAGE_LATE)])
    x = jnp.ones((2, 16, 20, 3))
    model = SegmentationUNet(features=(4, 8, 16), branch_width=8, conditioning="film",
                             condition_encoder=True)
    p = jax.eval_shape(model.init, jax.random.key(0), x, params)["params"]
    # FiLM: scale and shift for both convs of a block -> 4 x its width; encoder levels, the
    # bottleneck and the decoder levels are all conditioned
    assert p["branch_to_encoder_0"]["kernel"].shape == (8, 16)
    assert p["branch_to_encoder_1"]["kernel"].shape == (8, 32)
    assert p["branch_to_bottleneck"]["kernel"].shape == (8, 64)
    assert p["branch_to_decoder_0"]["kernel"].shape == (8, 32)
    assert p["branch_to_decoder_1"]["kernel"].shape == (8, 16)
    dec_only = SegmentationUNet(features=(4, 8, 16), branch_width=8, conditioning="film")
    assert not any(k.startswith(("branch_to_encoder", "branch_to_bottleneck"))
                   for k in jax.eval_shape(dec_only.init, jax.random.key(0), x, params)["params"])
    # FiLM projections start at zero: the conditioned network is the plain one at init
    x1 = jnp.asarray(np.random.default_rng(3).random((1, 8, 8, 1)), jnp.float32)
    small = SegmentationUNet(features=(4, 8), branch_width=8, conditioning="film",
                             condition_encoder=True)
    v = small.init(jax.random.key(1), x1, params[:1])
    np.testing.assert_array_equal(small.apply(v, x1, params[:1]), small.apply(v, x1, params[1:]))
    # standardization: the branch sees (p - mean) / std, so adding std to both the mean and
    # the input leaves the output unchanged
    mean, std = np.linspace(0.0, 1.0, PHYSICS_SIZE), np.linspace(0.5, 2.0, PHYSICS_SIZE)
    a = SegmentationUNet(features=(4, 8), branch_width=8, param_mean=tuple(mean),
                         param_std=tuple(std))
    b = SegmentationUNet(features=(4, 8), branch_width=8, param_mean=tuple(mean + std),
                         param_std=tuple(std))
    va = _numpy_init(a, x1, params[:1])
    np.testing.assert_allclose(a.apply(va, x1, params[:1]),
                               b.apply(va, x1, params[:1] + jnp.asarray(std, jnp.float32)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="conditioning"):
        jax.eval_shape(SegmentationUNet(conditioning="concat").init, jax.random.key(0), x,
                       params)


def test_per_family_standardization():
    from phyjax.physics.sequences import SEQUENCES
    from phyjax.segment.simulate import PAPER_RANGES, sample_protocols
    from phyjax.segment.train import parameter_statistics

    rng = np.random.default_rng(0)
    protocols = [p for f in ("mprage", "spgr") for p in sample_protocols(f, PAPER_RANGES, 30, rng)]
    raw = np.stack([physics_vector(p) for p in protocols])
    mean, std = (np.asarray(v).reshape(len(SEQUENCES), EXTENDED_SIZE)
                 for v in parameter_statistics(raw))
    spgr = SEQUENCES.index("spgr")
    ext = np.asarray(extended_vector(raw))
    z = (ext[30:] - mean[spgr]) / std[spgr]
    # every SPGR parameter that varies reaches the branch at unit sd (TR: 15-100 ms), and so do
    # the contrast features (GM/WM and CSF/WM signal ratios) that vary
    varying = ext[30:].std(0) > 1e-3
    assert varying[PHYSICS_SIZE + 1:].all() and not varying[PHYSICS_SIZE]   # WM is the 1
    np.testing.assert_allclose(z[:, varying & (np.arange(EXTENDED_SIZE) >= 10)].std(0), 1.0,
                               rtol=1e-5)
    np.testing.assert_allclose(z[:, 0].std(), 1.0, rtol=1e-5)        # TR
    np.testing.assert_array_equal(z[:, 5:5 + len(SEQUENCES)], raw[30:, 5:5 + len(SEQUENCES)])
    # the model picks its family's row: same output as a model given that row alone
    x = jnp.asarray(np.random.default_rng(4).random((2, 8, 8, 1)), jnp.float32)
    p = jnp.asarray(raw[[30, 31]])
    per_family = SegmentationUNet(features=(4, 8), branch_width=8,
                                  param_mean=tuple(mean.ravel()), param_std=tuple(std.ravel()))
    one_row = SegmentationUNet(features=(4, 8), branch_width=8, param_mean=tuple(mean[spgr]),
                               param_std=tuple(std[spgr]))
    v = _numpy_init(per_family, x, p)
    np.testing.assert_allclose(per_family.apply(v, x, p), one_row.apply(v, x, p), rtol=1e-5,
                               atol=1e-6)


def _numpy_init(model, *args):
    """Variables of ``model`` drawn with NumPy (JAX's PRNG compiles per shape: slow on CPU)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                        shapes)


def test_changing_the_parameters_changes_the_output_only_with_the_branch():
    x = jnp.asarray(np.random.default_rng(2).random((1, 16, 16, 1)), jnp.float32)
    early, late = (jnp.asarray(physics_vector(p))[None] for p in (MPRAGE_EARLY, MPRAGE_LATE))
    for physics, conditioning in ((True, "add"), (True, "film"), (False, "add")):
        model = SegmentationUNet(features=(4, 8), branch_width=8, physics=physics,
                                 conditioning=conditioning)
        variables = _numpy_init(model, x, early)
        diff = float(jnp.max(jnp.abs(model.apply(variables, x, early)
                                     - model.apply(variables, x, late))))
        assert (diff > 1e-3) if physics else (diff == 0.0), (physics, conditioning, diff)
        # training jitter of the standardized vector: zero jitter is no jitter; jitter of the
        # one-hot family alone changes nothing
        zero, onehot_only = (jnp.zeros_like(early),
                             jnp.zeros_like(early).at[:, 5:10].set(1.0))
        base = model.apply(variables, x, early)
        np.testing.assert_array_equal(model.apply(variables, x, early, zero), base)
        np.testing.assert_array_equal(model.apply(variables, x, early, onehot_only), base)
        jittered = model.apply(variables, x, early, jnp.ones_like(early))
        assert (float(jnp.max(jnp.abs(jittered - base))) > 1e-3) if physics else \
            np.array_equal(jittered, base)


def test_contrast_features_and_branch_options():
    from phyjax.physics import signal, tissues
    from phyjax.segment.model import (
        CONTRAST_SIZE,
        contrast_features,
        parse_conditioning,
    )

    # oracle: phyjax's signed signal equations for WM, GM, CSF, divided by the largest magnitude
    tp = tissues.tissue_parameters(3.0)
    spgr = [Protocol.from_degrees("spgr", tr=tr, te=te, flip_angle_deg=fa)
            for tr, te, fa in ((0.015, 0.004, 75.0), (0.087, 0.0071, 22.2), (0.05, 0.01, 15.0))]
    for p in spgr + [MPRAGE_EARLY, MPRAGE_LATE]:
        s = np.array([float(signal.signed_signal(p, tp[t].t1, tp[t].t2, tp[t].t2star, tp[t].pd))
                      for t in ("wm", "gm", "csf")])
        np.testing.assert_allclose(np.asarray(contrast_features(physics_vector(p))),
                                   s / np.abs(s).max(), rtol=1e-5, atol=1e-6)
    assert parse_conditioning("add") == ("add", "parameters", False)
    assert parse_conditioning("add+contrast+zero") == ("add", "contrast", True)
    assert parse_conditioning("film+both") == ("film", "both", True)
    with pytest.raises(ValueError, match="conditioning"):
        parse_conditioning("add+zero+contrast")
    x = jnp.asarray(np.random.default_rng(5).random((1, 8, 8, 1)), jnp.float32)
    a, b = (jnp.asarray(physics_vector(p))[None] for p in spgr[:2])
    for cond, n_in in (("add", PHYSICS_SIZE), ("add+contrast", 5 + CONTRAST_SIZE),
                       ("add+both", PHYSICS_SIZE + CONTRAST_SIZE)):
        model = SegmentationUNet(features=(4, 8), branch_width=8, conditioning=cond)
        v = model.init(jax.random.key(0), x, a)
        assert v["params"]["branch_dense_0"]["kernel"].shape == (n_in, 8)
        assert float(jnp.max(jnp.abs(model.apply(v, x, a) - model.apply(v, x, b)))) > 1e-4
        # "+zero": the decoder projections start at zero, so the branch starts as a no-op ...
        zero = SegmentationUNet(features=(4, 8), branch_width=8, conditioning=cond + "+zero")
        vz = zero.init(jax.random.key(0), x, a)
        np.testing.assert_array_equal(zero.apply(vz, x, a), zero.apply(vz, x, b))
        # ... and is the same network once they are not
        np.testing.assert_allclose(zero.apply(v, x, a), model.apply(v, x, a), rtol=1e-6)
    # the contrast branch sees the protocol only through its contrast: B0 / 3 T (entry 4) and
    # the raw parameters do not reach it
    model = SegmentationUNet(features=(4, 8), branch_width=8, conditioning="add+contrast")
    v = _numpy_init(model, x, a)
    np.testing.assert_array_equal(model.apply(v, x, a), model.apply(v, x, a.at[:, 4].add(1.0)))


def test_magnitude_contrast_features_are_what_a_magnitude_image_shows():
    from phyjax.physics import tissues
    from phyjax.segment.model import contrast_features
    from phyjax.segment.train import make_model, parameter_statistics

    # oracle: the static MPRAGE equation (Jog et al. 2015), |1 - 2 exp(-TI/T1) / (1 +
    # exp(-TR/T1))| PD exp(-TE/T2*), written out here
    tp = tissues.tissue_parameters(3.0)
    for p in (MPRAGE_EARLY, MPRAGE_LATE):
        s = np.array([tp[t].pd * np.exp(-p.te / tp[t].t2star)
                      * (1 - 2 * np.exp(-p.ti / tp[t].t1) / (1 + np.exp(-p.tr / tp[t].t1)))
                      for t in ("wm", "gm", "csf")])
        np.testing.assert_allclose(np.asarray(contrast_features(physics_vector(p), True)),
                                   np.abs(s) / np.abs(s).max(), rtol=1e-4, atol=1e-6)
    # at TI 0.6 s GM and CSF are before their nulls (negative), WM after: the signed features
    # keep that, the magnitude ones show CSF > GM > WM, as the magnitude image does
    signed = np.asarray(contrast_features(physics_vector(MPRAGE_EARLY)))
    mag = np.asarray(contrast_features(physics_vector(MPRAGE_EARLY), True))
    assert signed[0] > 0 > signed[1] > signed[2] and mag[2] > mag[1] > mag[0] > 0
    # SPGR signals are positive: both conventions agree
    p = physics_vector(Protocol.from_degrees("spgr", tr=0.087, te=0.0071, flip_angle_deg=22.2))
    np.testing.assert_array_equal(contrast_features(p), contrast_features(p, True))
    # the setting travels with a saved model; models saved without it load signed (as trained)
    raw = np.stack([physics_vector(MPRAGE_EARLY), physics_vector(MPRAGE_LATE)])
    mean, _ = parameter_statistics(raw, by_family=False, magnitude=True)
    np.testing.assert_allclose(np.asarray(mean[PHYSICS_SIZE:EXTENDED_SIZE]),
                               np.abs(np.asarray(extended_vector(raw))[:, PHYSICS_SIZE:]).mean(0),
                               rtol=1e-5)
    base = {"features": [4, 8], "physics": True, "branch_width": 8,
            "conditioning": "add+contrast"}
    assert make_model({**base, "contrast": "magnitude"}).contrast_magnitude
    assert not make_model(base).contrast_magnitude
    x = jnp.asarray(np.random.default_rng(5).random((1, 8, 8, 1)), jnp.float32)
    a = jnp.asarray(physics_vector(MPRAGE_EARLY))[None]
    m_signed, m_mag = make_model(base), make_model({**base, "contrast": "magnitude"})
    v = _numpy_init(m_signed, x, a)
    assert float(jnp.max(jnp.abs(m_signed.apply(v, x, a) - m_mag.apply(v, x, a)))) > 1e-4
    b = jnp.asarray(p)[None]
    np.testing.assert_array_equal(m_signed.apply(v, x, b), m_mag.apply(v, x, b))


def test_segment_mode_gives_the_branch_the_flip_angle_mprage_was_trained_with():
    from phyjax.segment.infer import network_protocol
    from phyjax.segment.simulate import PAPER_RANGES, sample_protocols
    from phyjax.segment.train import Segmenter, make_model, parameter_statistics

    rng = np.random.default_rng(1)
    raw = np.stack([physics_vector(p) for f in ("mprage", "spgr")
                    for p in sample_protocols(f, PAPER_RANGES, 20, rng)])
    mean, std = parameter_statistics(raw)
    settings = {"features": [4, 8], "physics": True, "branch_width": 8, "conditioning": "add",
                "param_mean": mean, "param_std": std, "context": 0, "voxel_mm": 3.0,
                "ranges": json.loads(json.dumps(PAPER_RANGES)), "physics_size": PHYSICS_SIZE}
    real = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.9, flip_angle_deg=9.0)
    static = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.9)   # trained: flip 0
    seg = Segmenter(settings, _numpy_init(make_model(settings), jnp.zeros((1, 8, 8, 1)),
                                          jnp.zeros((1, PHYSICS_SIZE))))
    assert network_protocol(seg, real) == static
    spgr = Protocol.from_degrees("spgr", tr=0.05, te=0.005, flip_angle_deg=30.0)
    assert network_protocol(seg, spgr) == spgr          # SPGR's flip is a trained variable
    image = np.random.default_rng(2).random((8, 8, 4)).astype(np.float32)
    mask = np.ones(image.shape, bool)
    told = seg.predict(image, mask, physics_vector(network_protocol(seg, real)))
    np.testing.assert_array_equal(told, seg.predict(image, mask, physics_vector(static)))
    # the readout flip as read would reach the paper-input branch far outside training
    assert np.abs(told - seg.predict(image, mask, physics_vector(real))).max() > 1e-3


def test_segment_mode_refuses_an_mprage_readout_train_it_was_not_trained_on():
    """A model trained on the static equation (the paper's ranges, flip 0) refuses a scan with
    a readout train; a model trained on the readout train (the default ranges) accepts the
    same scan and refuses the static one, whose contrast it was not trained on."""
    from phyjax.physics import signal
    from phyjax.segment.infer import check_protocol
    from phyjax.segment.simulate import PAPER_RANGES, READOUT_RANGES

    # what check_protocol reads of a segmenter: its training ranges
    trained = types.SimpleNamespace(settings={"ranges": json.loads(json.dumps(PAPER_RANGES))})

    static = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.9)
    train = static.replace(tr_readout=0.0065, n_readouts=256.0,
                           flip_angle=float(np.deg2rad(9.0)))
    # the static equation's contrast at TI 0.9 s is not the readout train's (why it matters)
    wm, gm = (0.85, 0.07, 0.05, 0.69), (1.35, 0.08, 0.05, 0.8)   # T1, T2, T2* (s), PD at 3 T
    ratio = [float(np.abs(signal.signed_signal(p, *gm)) / np.abs(signal.signed_signal(p, *wm)))
             for p in (static, train)]
    assert abs(ratio[0] - ratio[1]) > 0.1
    assert check_protocol(trained, static, "t1w.json", allow_outside=False) is not None
    with pytest.raises(InputError, match="readout train.*static MPRAGE equation"):
        check_protocol(trained, train, "t1w.json", allow_outside=False)
    notes = check_protocol(trained, train, "t1w.json", allow_outside=True)
    assert any("readout train" in n for n in notes)
    # the readout-trained model: the train is in range, the static scan is outside
    readout = types.SimpleNamespace(settings={"ranges": json.loads(json.dumps(READOUT_RANGES))})
    assert not any("outside" in n for n in check_protocol(readout, train, "t1w.json", False))
    with pytest.raises(InputError, match="without its readout train.*tr_readout"):
        check_protocol(readout, static, "t1w.json", allow_outside=False)
    # a train that does not fit TI (half of 256 x 9 ms = 1.15 s > TI 0.9 s) is refused too
    with pytest.raises(InputError, match="does not fit TI 0.9 s"):
        check_protocol(readout, train.replace(tr_readout=0.009), "t1w.json", False)


def _readout_config_ranges():
    """The default config's training ranges (``configs/physics_seg.py``), as saved."""
    from phyjax.experiments.physics_seg import ranges_of

    return json.loads(json.dumps(ranges_of(load_config("physics_seg"))))


def test_training_mprage_images_are_the_full_form_readout_equation():
    """Oracle: the training simulator's MPRAGE images (protocols drawn from the default config's
    ranges, clean scanner effects) equal phyjax.physics.mp2rage.mprage_full voxel-wise for the
    same T1, PD, T2* and parameters, and not the static equation."""
    from phyjax.physics import mp2rage, signal
    from phyjax.physics.scanner import ScannerEffects
    from phyjax.segment import simulate

    ranges = _readout_config_ranges()
    assert ranges["mprage"]["flip_angle"] == [6.0, 12.0]   # the default trains with the train
    protocols = simulate.sample_protocols("mprage", ranges, 3, np.random.default_rng(7))
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    maps = {"t1": rng.uniform(0.6, 4.5, shape).astype(np.float32),
            "t2": np.full(shape, 0.08, np.float32),
            "t2star": rng.uniform(0.03, 0.08, shape).astype(np.float32),
            "pd": rng.uniform(0.6, 1.0, shape).astype(np.float32)}
    mask = np.ones(shape, bool)
    for p in protocols:
        b = {k: v for k, v in ranges["mprage"].items() if isinstance(v, list)}
        for k, (lo, hi) in b.items():       # drawn inside the ranges, the train fits
            v = np.rad2deg(float(p.flip_angle)) if k == "flip_angle" else float(getattr(p, k))
            assert lo <= v <= hi, (k, v)
        assert float(p.n_readouts) == int(p.n_readouts) and not simulate.readout_problem(p)
        img = simulate.image(maps, mask, p, ScannerEffects(), jax.random.key(0))
        oracle = np.abs(np.asarray(mp2rage.mprage_full(
            maps["t1"].astype(np.float64), maps["pd"], mp2rage.MPRAGEProtocol(
                tr=float(p.tr), ti=float(p.ti), flip_angle=float(p.flip_angle),
                readout_tr=float(p.tr_readout), n_readouts=int(p.n_readouts), te=float(p.te)),
            t2star=maps["t2star"])))
        oracle = oracle / np.percentile(oracle, 99.0)
        np.testing.assert_allclose(img, oracle, rtol=2e-4, atol=2e-5)
        static = np.abs(np.asarray(signal.mprage(maps["t1"], maps["t2star"], maps["pd"],
                                                 float(p.tr), float(p.ti), float(p.te))))
        assert np.abs(img - static / np.percentile(static, 99.0)).max() > 0.05


def test_contrast_features_use_the_readout_train_and_the_branch_sees_it():
    """The contrast features of a readout-train MPRAGE are mprage_full's WM/GM/CSF signals
    (oracle), differ from the static equation's, and change the branch's output when only the
    readout parameters change (paper inputs, contrast features and both)."""
    from phyjax.physics import mp2rage, tissues
    from phyjax.segment.model import contrast_features

    tp = [tissues.tissue_parameters(3.0)[t] for t in ("wm", "gm", "csf")]
    p = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.9, flip_angle_deg=9.0).replace(
        tr_readout=0.0065, n_readouts=256.0)
    s = np.array([float(mp2rage.mprage_full(t.t1, t.pd, mp2rage.MPRAGEProtocol(
        tr=2.4, ti=0.9, flip_angle=np.deg2rad(9.0), readout_tr=0.0065, n_readouts=256,
        te=0.003), t2star=t.t2star)) for t in tp])
    got = np.asarray(contrast_features(physics_vector(p)))
    np.testing.assert_allclose(got, s / np.abs(s).max(), rtol=1e-4, atol=1e-6)
    static = np.asarray(contrast_features(physics_vector(p.replace(n_readouts=0.0))))
    assert abs(got[1] - static[1]) > 0.2      # GM/WM 0.69 vs 0.37 (docs/physics_seg_experiments.md)
    # a legacy-width vector (models trained before the readout train) keeps the static form
    np.testing.assert_allclose(np.asarray(contrast_features(physics_vector(p)[:READOUT_SLICE
                                                                              .start])),
                               static, rtol=1e-6)
    x = jnp.asarray(np.random.default_rng(5).random((1, 8, 8, 1)), jnp.float32)
    a = jnp.asarray(physics_vector(p))[None]
    b = jnp.asarray(physics_vector(p.replace(tr_readout=0.009, n_readouts=128.0)))[None]
    for cond in ("add", "add+contrast", "add+both"):
        model = SegmentationUNet(features=(4, 8), branch_width=8, conditioning=cond)
        v = _numpy_init(model, x, a)
        assert float(jnp.max(jnp.abs(model.apply(v, x, a) - model.apply(v, x, b)))) > 1e-4, cond


def test_real_philips_sidecar_is_in_the_trained_range_with_its_readout():
    """The real Philips ADNI MPRAGE sidecar (T1-TFE: TI 0.9 s, 256 readouts of 6.5 ms, 9 deg)
    with the shot interval given (2.4 s, not in the sidecar) is read with its readout train and
    accepted by a model trained on the default ranges; the branch reads it as read."""
    from phyjax.data.sidecar import read_given
    from phyjax.segment.infer import check_protocol, network_protocol

    path = os.path.join(ROOT, "tests", "data", "vendor_t1_sidecars",
                        "Philips_R571_T1TFE_mprage_classic.json")
    p = read_given(path, "", {"tr": 2.4}, require_file=True).protocol()
    assert p.sequence == "mprage"
    assert (float(p.tr_readout), float(p.n_readouts)) == (pytest.approx(0.006501), 256.0)
    assert np.rad2deg(float(p.flip_angle)) == pytest.approx(9.0)
    trained = types.SimpleNamespace(settings={"ranges": _readout_config_ranges()})
    notes = check_protocol(trained, p, path, allow_outside=False)
    assert not any("outside" in n for n in notes) and any("te fixed" in n for n in notes)
    assert network_protocol(trained, p) == p
    np.testing.assert_allclose(physics_vector(p)[READOUT_SLICE], [0.6501, 1.0], rtol=1e-5)


def test_static_mprage_training_is_reachable_from_the_command_line():
    """``--config.data.mprage.tr=2.4 --config.data.mprage.flip_angle=0 ...tr_readout=0
    ...n_readouts=0`` (numbers on pair fields arrive as 1-tuples) gives the static MPRAGE
    ranges, drawing the same protocols as the paper's ranges and no readout train."""
    from phyjax.experiments.physics_seg import ranges_of
    from phyjax.segment import simulate

    config = load_config("physics_seg")
    with config.unlocked():
        for k, v in (("tr", (2.4,)), ("flip_angle", (0,)), ("tr_readout", (0,)),
                     ("n_readouts", (0,))):
            config.data.mprage[k] = v
    ranges = ranges_of(config)
    assert ranges["mprage"]["tr"] == 2.4 and ranges["mprage"]["n_readouts"] == 0.0
    static = simulate.sample_protocols("mprage", ranges, 4, np.random.default_rng(3))
    paper = simulate.sample_protocols("mprage", simulate.PAPER_RANGES, 4,
                                      np.random.default_rng(3))
    assert static == paper and not any(float(p.n_readouts) for p in static)


def test_range_margin_widens_training_draws_only():
    """``data.range_margin``: training protocols are drawn from ``(lo / (1 + m), hi (1 + m))``
    (flip capped at 90 deg, fixed fields kept), so some fall outside the configured range;
    the supported ranges (what the evaluation draws from and segment mode checks against) are
    those without the margin; a negative margin is refused before any work."""
    from phyjax.experiments.physics_seg import check_config, ranges_of, training_ranges
    from phyjax.segment import simulate

    config = load_config("physics_seg")
    with config.unlocked():
        config.data.range_margin = 0.25
    ranges, wide = ranges_of(config), training_ranges(config)
    assert wide["mprage"]["ti"] == pytest.approx((0.6 / 1.25, 1.2 * 1.25))
    assert wide["spgr"]["tr"] == pytest.approx((0.015 / 1.25, 0.100 * 1.25))
    assert wide["spgr"]["flip_angle"] == pytest.approx((15.0 / 1.25, 90.0))   # 93.75 capped
    assert wide["mprage"]["te"] == ranges["mprage"]["te"] == 0.003
    assert wide["spgr"]["field_strength"] == 3.0
    drawn = simulate.sample_protocols("spgr", wide, 200, np.random.default_rng(0))
    outside = [p for p in drawn if simulate.in_range(p, ranges)]
    assert outside and not [p for p in drawn if simulate.in_range(p, wide)]
    mprage = simulate.sample_protocols("mprage", wide, 200, np.random.default_rng(0))
    tis = [float(p.ti) for p in mprage]
    assert min(tis) < 0.6 and max(tis) > 1.2
    assert not [p for p in mprage if simulate.readout_problem(p)]
    assert ranges == ranges_of(load_config("physics_seg"))   # the margin-free supported ranges
    with config.unlocked():
        config.data.range_margin = -0.1
    with pytest.raises(InputError, match="range_margin"):
        check_config(config)


def test_one_evaluation_protocol_is_refused_before_training():
    """A family's CoV across protocols needs two of them: one is refused by the config check,
    naming the key, and not after the models have trained."""
    from phyjax.experiments.physics_seg import check_config

    config = load_config("physics_seg")
    check_config(config)
    with config.unlocked():
        config.eval.n_spgr = 1
    with pytest.raises(InputError, match=r"config\.eval\.n_spgr=1.*at least 2"):
        check_config(config)
    with config.unlocked():
        config.data.families = ("mprage",)            # SPGR not evaluated: no objection
    check_config(config)


def test_segment_mode_refuses_an_out_of_range_readout_flip_naming_it():
    from phyjax.segment.infer import check_protocol

    trained = types.SimpleNamespace(settings={"ranges": _readout_config_ranges()})
    p = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.9, flip_angle_deg=14.0).replace(
        tr_readout=0.0065, n_readouts=256.0)
    with pytest.raises(InputError, match=r"t1w\.json: outside the trained range: flip_angle 14 "
                                         r"deg \(trained on 6-12 deg\)"):
        check_protocol(trained, p, "t1w.json", allow_outside=False)
    notes = check_protocol(trained, p, "t1w.json", allow_outside=True)
    assert "outside the trained range: flip_angle 14 deg (trained on 6-12 deg)" in notes
    # each other readout parameter is named the same way
    with pytest.raises(InputError, match=r"n_readouts 64 \(trained on 128-256\)"):
        check_protocol(trained, p.replace(flip_angle=float(np.deg2rad(9.0)), n_readouts=64.0),
                       "t1w.json", allow_outside=False)
    with pytest.raises(InputError, match=r"tr 1.7 s \(trained on 1.9-3 s\)"):
        check_protocol(trained, p.replace(flip_angle=float(np.deg2rad(9.0)), tr=1.7),
                       "t1w.json", allow_outside=False)


def test_gold_standard_is_the_normalized_normal_likelihood():
    r1 = np.array([0.1, 0.24, 0.45, 0.683, 0.8595, 1.036, 1.5])
    got = np.asarray(gold.r1_probabilities(r1))
    # independent oracle: scipy's normal pdf with the paper's values, normalized per voxel
    lik = np.stack([stats.norm.pdf(r1, *gold.PAPER_R1[t]) for t in gold.CLASSES], -1)
    expected = lik / lik.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # closed form: equal GM/WM sds -> the GM/WM boundary is the midpoint of their means
    mid = np.asarray(gold.r1_probabilities(np.array([(0.683 + 1.036) / 2])))[0]
    assert abs(mid[1] - mid[2]) < 1e-5 and mid[0] < 1e-10
    # priors shift the posterior by their ratio: p_gm / p_wm at the midpoint = 3
    mid3 = np.asarray(gold.r1_probabilities(np.array([0.8595]), priors=(1.0, 3.0, 1.0)))[0]
    np.testing.assert_allclose(mid3[1] / mid3[2], 3.0, rtol=1e-4)
    t1 = np.array([[[1.0 / 0.683, 1.0 / 1.036, 0.0]]])
    g = gold.gold_standard(t1, t1 > 0)
    assert g.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(g[0, 0, :2].sum(-1), 1.0, atol=1e-6)
    assert g[0, 0, 0, 1] > 0.99 and g[0, 0, 1, 2] > 0.99 and np.all(g[0, 0, 2] == 0)
    with pytest.raises(ValueError, match="positive"):
        gold.r1_probabilities(r1, sds=(0.03, 0.0, 0.08))


def test_signed_reconstruction_keeps_the_sign_of_the_static_mprage_signal():
    from phyjax.physics.scanner import ScannerEffects
    from phyjax.segment import simulate

    # two uniform tissues (WM | GM) at TI 0.6 s: WM above its null, GM below (signed < 0)
    shape = (4, 4, 2)
    t1 = np.where(np.arange(4)[:, None, None] < 2, 0.81, 1.35) * np.ones(shape)
    pd = np.where(t1 < 1.0, 0.77, 0.86)
    maps = {"t1": t1.astype(np.float32), "t2": np.full(shape, 0.1, np.float32),
            "t2star": np.full(shape, 0.06, np.float32), "pd": pd.astype(np.float32)}
    mask = np.ones(shape, bool)
    clean = ScannerEffects()
    mag = simulate.image(maps, mask, MPRAGE_EARLY, clean, jax.random.key(0))
    signed = simulate.image(maps, mask, MPRAGE_EARLY, clean, jax.random.key(0), "signed")
    # closed form (static MPRAGE, Jog et al. 2015), written out here independently
    def static(t1, m0):
        return m0 * (1 - 2 * np.exp(-0.6 / t1) / (1 + np.exp(-2.4 / t1))) * np.exp(-0.003 / 0.06)

    s_wm, s_gm = static(0.81, 0.77), static(1.35, 0.86)
    assert s_wm > 0 > s_gm
    np.testing.assert_allclose(signed[0, 0, 0] / signed[3, 0, 0], s_wm / s_gm, rtol=1e-4)
    np.testing.assert_allclose(np.abs(signed), mag, rtol=1e-6)
    with pytest.raises(ValueError, match="reconstruction"):
        simulate.image(maps, mask, MPRAGE_EARLY, clean, jax.random.key(0), "complex")


def test_soft_dice_loss_against_hand_computed_values():
    y = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])[None]          # (1, 2 voxels, 2 classes)
    mask = jnp.ones((1, 2, 1))
    assert float(soft_dice_loss(y, y, mask)) == pytest.approx(0.0, abs=1e-6)
    p = jnp.asarray([[0.5, 0.5], [0.5, 0.5]])[None]
    # each class: 2 * 0.5 / (1 + 1) = 0.5 -> loss 0.5
    assert float(soft_dice_loss(p, y, mask)) == pytest.approx(0.5, abs=1e-5)
    # a masked-out voxel does not count: only voxel 0 (class 0 right, class 1 absent -> eps/eps)
    half = jnp.asarray([[1.0], [0.0]])[None]
    assert float(soft_dice_loss(jnp.asarray([[1.0, 0.0], [1.0, 0.0]])[None], y, half)) == \
        pytest.approx(0.0, abs=1e-5)


def test_cross_entropy_by_hand_and_the_dice_volume_bias_it_avoids():
    from phyjax.segment.train import segmentation_loss, soft_cross_entropy

    logits = jnp.log(jnp.asarray([[0.25, 0.75], [0.5, 0.5]]))[None]   # softmax = these rows
    y = jnp.asarray([[0.5, 0.5], [1.0, 0.0]])[None]
    mask = jnp.asarray([[1.0], [1.0]])[None]
    expected = (-(0.5 * np.log(0.25) + 0.5 * np.log(0.75)) - np.log(0.5)) / 2
    assert float(soft_cross_entropy(logits, y, mask)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_cross_entropy(logits, y, mask.at[0, 1].set(0.0))) == \
        pytest.approx(-(0.5 * np.log(0.25) + 0.5 * np.log(0.75)), rel=1e-5)
    assert float(segmentation_loss("dice_ce", logits, y, mask)) == pytest.approx(
        float(soft_dice_loss(jax.nn.softmax(logits), y, mask))
        + float(soft_cross_entropy(logits, y, mask)), rel=1e-6)
    with pytest.raises(ValueError, match="loss"):
        segmentation_loss("focal", logits, y, mask)

    # Why the soft Dice biases volumes: a partial-volume voxel of target 0.45 is better left
    # out (p = 0) when the rest of the class is segmented perfectly (Dice 1: threshold 0.5),
    # but better put in (p = 1) when the rest has Dice 0.8 (threshold 0.4) -- the decision
    # moves with how hard the image is, i.e. with the protocol.
    def dice_with(p, n_fp):
        target = jnp.asarray([1.0] * 8 + [0.0] * n_fp + [0.45])[None, :, None]
        probs = jnp.asarray([1.0] * 8 + [1.0] * n_fp + [p])[None, :, None]
        return float(soft_dice_loss(probs, target, jnp.ones_like(target)))

    assert dice_with(0.0, 0) < dice_with(1.0, 0)      # easy image: leave it out
    assert dice_with(1.0, 4) < dice_with(0.0, 4)      # hard image (4 false positives): put it in


def test_volume_cov_and_bridging_helpers():
    probs = np.zeros((2, 2, 1, 3))
    probs[..., 1] = 0.25
    assert evaluate.volumes_ml(probs, 1000.0)["gm"] == pytest.approx(1.0)  # 4 x 0.25 x 1 mL
    # bridging: site B's volumes do not depend on the candidate; site A's equal them at i = 2
    base = np.array([500.0, 520.0, 480.0])[:, None, None]
    vol_b = np.repeat(base, 4, axis=1).repeat(2, axis=2)
    vol_a = base * (1.0 + 0.05 * (np.arange(4) - 2.0))[None, :, None].repeat(2, axis=2)
    assert evaluate.bridge_parameters(vol_a, vol_b)[:2] == (2, 0)
    # CoV across protocols of the draw-averaged volume: protocol 0 draws 9, 11 (mean 10),
    # protocol 1 draws 12, 12 -> CoV = sd(10, 12) / 11; draw sd = mean(sd(9, 11)/10, 0)
    rows = [{"method": "m", "family": "f", "subject": "s", "protocol": j, "draw": d,
             "vol_gm": v, "vol_wm": 1.0, "dice_csf": 1.0, "dice_gm": 1.0, "dice_wm": 1.0}
            for (j, d), v in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [9.0, 11.0, 12.0, 12.0])]
    (row,) = evaluate.cov_table(rows)
    assert (row["n_protocols"], row["n_draws"]) == (2, 2)
    assert row["cov_gm"] == pytest.approx(np.sqrt(2.0) / 11.0)
    assert row["draw_sd_gm"] == pytest.approx(np.sqrt(2.0) / 10.0 / 2.0)
    assert row["cov_wm"] == 0.0
    slope, intercept = evaluate.fit_linear([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
    assert (slope, intercept) == (pytest.approx(2.0), pytest.approx(1.0))


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    """``python -m phyjax.main --config=configs/physics_seg.py:debug`` (the README command)."""
    workdir = str(tmp_path_factory.mktemp("physics_seg"))
    proc = subprocess.run([sys.executable, "-m", "phyjax.main",
                           "--config=configs/physics_seg.py:debug", f"--workdir={workdir}",
                           "--config.progress=False"],
                          check=False, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_debug_run_reports_every_method_and_family(debug_run):
    with open(os.path.join(debug_run, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["family"]) for r in rows} == {
        (m, f) for m in ("physics", "no_branch", "hmrf") for f in ("mprage", "spgr")}
    for r in rows:
        assert 0.0 <= float(r["cov_gm"]) < 1.0 and 0.0 <= float(r["dice_wm"]) <= 1.0
    with open(os.path.join(debug_run, "bridging.csv")) as f:
        assert len(list(csv.DictReader(f))) == 4
    for name in ("report.md", "evaluation.csv", "cov_per_subject.csv", "volume_vs_ti.png",
                 "physics_unet/model/variables.msgpack", "no_branch_unet/train_log.csv"):
        assert os.path.exists(os.path.join(debug_run, name)), name


def _write_input(folder, protocol, shape=(30, 36, 30)):
    """A T1w-like NIfTI (1 mm-ish, oblique-free) with a sidecar and a brain mask."""
    rng = np.random.default_rng(0)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape, np.float32) - 1) / 2
    r = np.sqrt(sum(((g - c) / (s / 2.5)) ** 2 for g, c, s in zip(grid, centre, shape)))
    image = np.where(r < 0.6, 1.0, np.where(r < 0.9, 0.7, 0.3)) + 0.02 * rng.random(shape)
    mask = (r < 1.1).astype(np.uint8)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    path = os.path.join(folder, "sub-01_T1w.nii.gz")
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), path)
    nib.save(nib.Nifti1Image(mask, affine), os.path.join(folder, "mask.nii.gz"))
    with open(os.path.join(folder, "sub-01_T1w.json"), "w") as f:
        json.dump(protocol_to_sidecar(protocol), f)
    return path, mask.astype(bool)


def test_segment_mode_writes_probability_maps_and_volumes(debug_run, tmp_path):
    from phyjax.experiments import registry

    # the sidecar gives the readout TR (RepetitionTimeExcitation); the readouts per shot come
    # from the command line (a BIDS sidecar has no field for them)
    protocol = Protocol.from_degrees("mprage", tr=2.3, te=0.003, ti=0.9, flip_angle_deg=9.0)
    path, mask = _write_input(str(tmp_path), protocol.replace(tr_readout=0.007))
    config = load_config("physics_seg")
    with config.unlocked():
        config.mode = "segment"
        config.segment.input = path
        config.segment.mask = str(tmp_path / "mask.nii.gz")
        config.segment.output = str(tmp_path / "out")
    with pytest.raises(InputError, match="without its readout train"):   # n_readouts unknown
        registry.run(config, debug_run)
    with config.unlocked():
        config.segment.n_readouts = 160.0
    out = registry.run(config, debug_run)
    maps = [nib.load(os.path.join(out, f"sub-01_label-{t}_probseg.nii.gz"))
            for t in ("CSF", "GM", "WM")]
    probs = np.stack([np.asarray(m.dataobj) for m in maps], -1)
    assert probs.shape == mask.shape + (3,)
    np.testing.assert_allclose(maps[0].affine, np.diag([4.0, 4.0, 4.0, 1.0]))
    np.testing.assert_allclose(probs[mask].sum(-1), 1.0, atol=1e-4)
    assert np.all(probs[~mask] == 0)
    with open(os.path.join(out, "tissue_volumes.tsv")) as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    assert float(row["gm_ml"]) == pytest.approx(probs[..., 1].sum() * 64 / 1000, rel=1e-3)
    with open(os.path.join(out, "sub-01_label-GM_probseg.json")) as f:
        meta = json.load(f)
    assert meta["AcquisitionProtocol"]["InversionTime"] == pytest.approx(0.9)
    assert meta["AcquisitionProtocol"]["RepetitionTimeExcitation"] == pytest.approx(0.007)
    assert meta["AcquisitionProtocolOrigin"]["n_readouts"] == "command line"
    assert any("te fixed at 0.003" in n for n in meta["Notes"])

    # A TI outside the trained range is refused before any compute, naming the sidecar.
    with open(os.path.join(str(tmp_path), "sub-01_T1w.json"), "w") as f:
        json.dump(protocol_to_sidecar(protocol.replace(tr=2.8, ti=2.0, tr_readout=0.007)), f)
    with config.unlocked():
        config.segment.output = str(tmp_path / "out2")
    with pytest.raises(InputError, match=r"sub-01_T1w\.json.*ti 2"):
        registry.run(config, debug_run)
    assert not os.path.exists(tmp_path / "out2")


def test_segment_mode_on_a_bids_folder_without_sites(debug_run, tmp_path):
    from phyjax.experiments import registry

    root = tmp_path / "bids"
    protocols = {"01": Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=1.0,
                                             flip_angle_deg=8.0).replace(tr_readout=0.0075),
                 "02": Protocol.from_degrees("spgr", tr=0.03, te=0.005, flip_angle_deg=30)}
    for sub, protocol in protocols.items():
        folder = root / f"sub-{sub}" / "anat"
        folder.mkdir(parents=True)
        path, _ = _write_input(str(folder), protocol)
        os.rename(path, str(folder / f"sub-{sub}_T1w.nii.gz"))
        os.rename(str(folder / "sub-01_T1w.json"), str(folder / f"sub-{sub}_T1w.json"))
        masks = root / "derivatives" / "masks" / f"sub-{sub}" / "anat"
        masks.mkdir(parents=True)
        os.rename(str(folder / "mask.nii.gz"), str(masks / f"sub-{sub}_desc-brain_mask.nii.gz"))
    config = load_config("physics_seg")
    with config.unlocked():
        config.mode = "segment"
        config.segment.bids_root = str(root)
        config.segment.n_readouts = 176.0        # the MPRAGE's; the SPGR is left alone
        config.progress = False
    out = registry.run(config, debug_run)
    assert out == str(root / "derivatives" / "phyjax-physics-seg")
    with open(os.path.join(out, "tissue_volumes.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["family"] for r in rows] == ["mprage", "spgr"]
    assert float(rows[0]["n_readouts"]) == 176.0 and rows[1]["n_readouts"] == ""
    assert float(rows[1]["tr_readout_s"]) == pytest.approx(0.03)
    for sub in protocols:
        assert os.path.exists(os.path.join(out, f"sub-{sub}", "anat",
                                           f"sub-{sub}_label-WM_probseg.nii.gz"))
    with open(os.path.join(out, "dataset_description.json")) as f:
        assert json.load(f)["DatasetType"] == "derivative"


def test_nominal_b1_plus_changes_only_the_held_out_subjects_transmit_field():
    """``eval.b1_plus = "nominal"`` evaluates each held-out subject with B1+ = 1 and the rest of
    its scanner effects (the same draw, the same noise key) unchanged; another value is
    refused by the config check."""
    from phyjax.experiments.physics_seg import _subject_effects, check_config

    config = load_config("physics_seg")
    drawn, key = _subject_effects(config, 2)
    assert drawn.b1_scale != 1.0 and drawn.b1_curvature > 0.0
    with config.unlocked():
        config.eval.b1_plus = "nominal"
    check_config(config)
    nominal, key2 = _subject_effects(config, 2)
    assert (nominal.b1_scale, nominal.b1_curvature) == (1.0, 0.0)
    assert dataclasses.replace(nominal, b1_scale=drawn.b1_scale,
                               b1_curvature=drawn.b1_curvature) == drawn
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(key2))
    with config.unlocked():
        config.eval.b1_plus = "measured"
    with pytest.raises(InputError, match=r"config\.eval\.b1_plus='measured'"):
        check_config(config)


def test_slice_bank_value_jitter_gives_each_volume_its_own_tissues_and_gold():
    """``value_jitter``: every volume is imaged from its anatomy with its own tissue values and
    labelled from its own R1 (oracle: the image and the gold standard recomputed from the maps
    with the volume's factors, scanner effects off); the protocols are those drawn without it,
    and batches carry each volume's own labels."""
    from phyjax.data import simulated, synthetic
    from phyjax.data.slices import to_slices
    from phyjax.segment import simulate
    from phyjax.segment.gold import gold_standard

    heads = simulated.anatomies(1, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (1.0, 1.0), "b1_curvature": (0.0, 0.0), "bias_amplitude": (0.0, 0.0),
               "noise_fraction": (0.0, 0.0), "slice_fwhm": (0.0, 0.0), "gain": (1.0, 1.0)}
    args = (heads, ("spgr",), simulate.PAPER_RANGES, 3, effects, 2, 0.15, 1, 3)
    plain = simulate.SliceBank(*args)
    jit = simulate.SliceBank(*args, value_jitter=0.05)
    np.testing.assert_array_equal(plain.params, jit.params)            # same protocols
    assert plain.gold.shape[0] == 1 and jit.gold.shape[0] == 3
    np.testing.assert_array_equal(plain.volume_gold, [0, 0, 0])
    np.testing.assert_array_equal(jit.volume_gold, [0, 1, 2])
    # the tissue values of each volume: the bank's own stream, replayed
    rng = np.random.default_rng([3, 16, 3])
    head, mask = heads[0], heads[0].mask
    for v, p in enumerate(jit.protocols):
        f = np.clip(head.factors * (1.0 + 0.05 * rng.standard_normal((3, 4))), 0.7, 1.3)
        assert not np.allclose(f, head.factors)
        maps = synthetic.quantitative_maps(head.probs, f, head.texture, 3.0, head.partial_volume)
        gold = gold_standard(maps["t1"], mask)
        want = to_slices(gold[..., 1], jit.pads)
        np.testing.assert_allclose(jit.gold[v, ..., 1].astype(np.float32), want, atol=2e-3)
        clean = np.abs(np.asarray(synthetic.signed_image(maps, p)))
        ref = np.percentile(clean[mask], 99.0)
        img = to_slices(np.where(mask, clean / ref, 0.0), jit.pads)
        np.testing.assert_allclose(jit.images[v].astype(np.float32), img, atol=5e-3)
    # the gold standard moves with the values: a volume's GM differs from the anatomy's
    assert np.abs(jit.gold[1].astype(np.float32) - plain.gold[0].astype(np.float32)).max() > 0.05
    b = jit.batch(0, 16, 0)
    rows = jit.rows[np.random.default_rng([0, 0, 16]).choice(len(jit.rows), 16, replace=False)]
    np.testing.assert_array_equal(b["y"], jit.gold[rows[:, 0], rows[:, 1]].astype(np.float32))
    with pytest.raises(ValueError, match="value_jitter"):
        simulate.SliceBank(*args, value_jitter=-0.1)


def test_paired_batches_show_one_anatomy_under_two_protocols_and_the_consistency_term(tmp_path):
    """``train.consistency``: a paired batch's second half is the first half's slices of the
    same heads under another protocol of their family (oracle: the bank's own arrays), and the
    consistency term is the masked mean of the squared probability difference (by hand), zero
    for protocol-invariant segmentations; a short training run logs it."""
    from phyjax.data import simulated
    from phyjax.segment import simulate
    from phyjax.segment.train import make_model, protocol_consistency, train

    heads = simulated.anatomies(2, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (0.9, 1.1), "b1_curvature": (0.0, 0.1), "bias_amplitude": (0.0, 0.1),
               "noise_fraction": (0.01, 0.02), "slice_fwhm": (0.0, 0.0), "gain": (1.0, 1.0)}
    bank = simulate.SliceBank(heads, ("mprage", "spgr"), simulate.READOUT_RANGES, 3, effects,
                              2, 0.15, 1, 0)
    np.testing.assert_array_equal(bank.volume_family, [0, 0, 0, 1, 1, 1] * 2)
    b = bank.batch(5, 8, 0, paired=True)
    rows = bank.rows[np.random.default_rng([0, 5, 16]).choice(len(bank.rows), 4, replace=False)]
    v = rows[:, 0]
    other = bank.partners(v, np.random.default_rng([0, 5, 16, 1]))
    assert np.all(other != v)
    np.testing.assert_array_equal(bank.volume_anatomy[other], bank.volume_anatomy[v])
    np.testing.assert_array_equal(bank.volume_family[other], bank.volume_family[v])
    z = rows[:, 1]
    np.testing.assert_array_equal(b["x"][4:, ..., 1], bank.images[other, z].astype(np.float32))
    np.testing.assert_array_equal(b["x"][:4, ..., 1], bank.images[v, z].astype(np.float32))
    np.testing.assert_array_equal(b["y"][:4], b["y"][4:])       # one anatomy: one gold standard
    np.testing.assert_array_equal(b["mask"][:4], b["mask"][4:])
    np.testing.assert_array_equal(b["params"][4:], bank.params[other])
    assert not np.allclose(b["x"][:4], b["x"][4:])               # but two images
    # the unpaired batch is unchanged by the option's existence
    rows8 = bank.rows[np.random.default_rng([0, 5, 16]).choice(len(bank.rows), 8, replace=False)]
    np.testing.assert_array_equal(bank.batch(5, 8, 0)["x"][..., 1],
                                  bank.images[rows8[:, 0], rows8[:, 1]].astype(np.float32))
    with pytest.raises(ValueError, match="even"):
        bank.batch(0, 7, 0, paired=True)
    lone = simulate.SliceBank(heads[:1], ("spgr",), simulate.PAPER_RANGES, 1, effects, 2, 0.15,
                              1, 0)
    with pytest.raises(ValueError, match="n_per_family"):
        lone.batch(0, 4, 0, paired=True)

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(4, 5, 6))                 # (B=4, 5, 6, 3)
    mask = (rng.uniform(size=(4, 5, 6, 1)) > 0.3).astype(np.float32)
    want = (((p[:2] - p[2:]) ** 2).sum(-1)[..., None] * mask[:2]).sum() / mask[:2].sum()
    assert float(protocol_consistency(jnp.asarray(p), jnp.asarray(mask))) == \
        pytest.approx(want, rel=1e-5)
    same = np.concatenate([p[:2], p[:2]])
    assert float(protocol_consistency(jnp.asarray(same), jnp.asarray(mask))) == 0.0

    settings = {"features": [4, 8], "physics": True, "branch_width": 8,
                "conditioning": "add+contrast", "physics_size": PHYSICS_SIZE}
    t = types.SimpleNamespace(steps=2, batch_size=4, learning_rate=1e-3, checkpoint_every=2,
                              log_every=1, get=lambda k, d=None: {"loss": "ce",
                                                                  "consistency": 1.0}.get(k, d))
    train(make_model(settings), bank, t, str(tmp_path), 0, progress=False)
    with open(tmp_path / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    assert len(log) == 2 and all(float(r["consistency"]) > 0 for r in log)
    t.get = lambda k, d=None: {"loss": "ce", "consistency": -1.0}.get(k, d)
    with pytest.raises(ValueError, match="consistency"):
        train(make_model(settings), bank, t, str(tmp_path / "neg"), 0, progress=False)


def test_window_batches_are_crops_of_the_whole_slice_batch_centred_on_brain():
    """``model.patch``: a window batch is the whole-slice batch of the same step cropped (oracle:
    the uncropped batch, indexed by hand at the corners the bank's own stream gives), each
    window centred on a brain voxel and inside the slice; paired halves share their windows;
    a window larger than the slices is refused."""
    from phyjax.data import simulated
    from phyjax.segment import simulate

    heads = simulated.anatomies(2, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (0.9, 1.1), "b1_curvature": (0.0, 0.1), "bias_amplitude": (0.0, 0.1),
               "noise_fraction": (0.01, 0.02), "slice_fwhm": (0.0, 0.0), "gain": (1.0, 1.0)}
    bank = simulate.SliceBank(heads, ("spgr",), simulate.PAPER_RANGES, 3, effects, 2, 0.15, 1, 0)
    h, w = bank.padded
    for paired in (False, True):
        full = bank.batch(3, 8, 0, b1_known=0.5, paired=paired)
        win = bank.batch(3, 8, 0, b1_known=0.5, paired=paired, patch=8)
        n = 4 if paired else 8
        corners = simulate.SliceBank.crop(full["mask"][:n, ..., 0], 8,
                                          np.random.default_rng([0, 3, 16, 2]))
        if paired:
            corners = np.concatenate([corners, corners])
        assert win["x"].shape == (8, 8, 8, 3) and win["y"].shape == (8, 8, 8, 3)
        assert win["mask"].shape == (8, 8, 8, 1) and win["b1"].shape == (8, 8, 8)
        for j, (r, c) in enumerate(corners):
            assert 0 <= r <= h - 8 and 0 <= c <= w - 8
            for k in ("x", "y", "mask"):
                np.testing.assert_array_equal(win[k][j], full[k][j, r:r + 8, c:c + 8])
            np.testing.assert_array_equal(win["b1"][j], full["b1"][j, r:r + 8, c:c + 8])
            assert win["mask"][j].sum() > 0                     # brain in every window
        np.testing.assert_array_equal(win["params"], full["params"])
        np.testing.assert_array_equal(win["noise"], full["noise"])
    # the window is centred on a drawn brain voxel unless the slice edge stops it
    m = np.zeros((1, h, w))
    m[0, h // 2, w - 1] = 1.0
    np.testing.assert_array_equal(simulate.SliceBank.crop(m, 8, np.random.default_rng(0)),
                                  [[h // 2 - 4, w - 8]])
    with pytest.raises(ValueError, match="does not fit"):
        bank.batch(0, 4, 0, patch=max(h, w) + 2)


def test_tiled_inference_averages_overlapping_windows():
    """:func:`phyjax.segment.train.tiled` against a direct loop over every window: the output
    of a window-dependent function (each window's mean, broadcast) is the average over the
    windows covering each voxel; a voxel-wise function comes back unchanged; slices smaller
    than the window are padded and cropped back."""
    from phyjax.segment.train import tile_starts, tiled

    np.testing.assert_array_equal(tile_starts(20, 8), [0, 4, 8, 12])
    np.testing.assert_array_equal(tile_starts(22, 8), [0, 4, 8, 12, 14])
    np.testing.assert_array_equal(tile_starts(8, 8), [0])
    with pytest.raises(ValueError, match="does not fit"):
        tile_starts(6, 8)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 20, 22, 2)).astype(np.float32)
    calls = []

    def window_mean(tiles, b1):
        calls.append(tiles.shape)
        return np.broadcast_to(tiles.mean((1, 2, 3), keepdims=True), tiles.shape[:3] + (1,))

    got = tiled(window_mean, x, None, 8)
    acc, cnt = np.zeros((3, 20, 22, 1)), np.zeros((3, 20, 22, 1))
    for r in (0, 4, 8, 12):
        for c in (0, 4, 8, 12, 14):
            acc[:, r:r + 8, c:c + 8] += x[:, r:r + 8, c:c + 8].mean((1, 2, 3))[:, None, None, None]
            cnt[:, r:r + 8, c:c + 8] += 1
    np.testing.assert_allclose(got, acc / cnt, rtol=1e-5, atol=1e-6)
    assert calls == [(3 * 4 * 5, 8, 8, 2)]
    np.testing.assert_allclose(tiled(lambda t, b: t * 2.0, x, None, 8), 2.0 * x, rtol=1e-6)
    b1 = rng.uniform(0.8, 1.2, size=(3, 20, 22)).astype(np.float32)
    np.testing.assert_allclose(tiled(lambda t, b: b[..., None], x, b1, 8)[..., 0], b1,
                               rtol=1e-6)
    small = x[:, :6, :5]
    np.testing.assert_allclose(tiled(lambda t, b: t + 1.0, small, None, 8), small + 1.0,
                               rtol=1e-6)


def test_a_window_trained_segmenter_runs_window_by_window(tmp_path):
    """A U-Net with ``patch`` in its settings is saved with it and segments a volume window by
    window: its probabilities equal :func:`tiled` over the network applied to each window by
    hand (and differ from whole-slice inference); a window the U-Net cannot take is refused
    before training."""
    from phyjax.data import simulated
    from phyjax.data.slices import grid, to_slices, with_context
    from phyjax.experiments.physics_seg import check_config
    from phyjax.segment import simulate
    from phyjax.segment.train import Segmenter, init_params, make_model, tiled, train

    # the shapes of the other debug-size tests (features, context), so that their compiled
    # initialisers are reused
    heads = simulated.anatomies(1, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (1.0, 1.0), "b1_curvature": (0.0, 0.0), "bias_amplitude": (0.0, 0.0),
               "noise_fraction": (0.01, 0.01), "slice_fwhm": (0.0, 0.0), "gain": (1.0, 1.0)}
    bank = simulate.SliceBank(heads, ("spgr",), simulate.PAPER_RANGES, 2, effects, 2, 0.15, 1, 0)
    settings = {"features": [4, 8], "physics": False, "branch_width": 8, "context": 1,
                "conditioning": "add", "physics_size": PHYSICS_SIZE, "patch": 8}
    t = types.SimpleNamespace(steps=2, batch_size=4, learning_rate=1e-3, checkpoint_every=2,
                              log_every=1, get=lambda k, d=None: {"loss": "ce"}.get(k, d))
    model = make_model(settings)
    with pytest.raises(ValueError, match="model.patch 7"):
        train(model, bank, t, str(tmp_path / "odd"), 0, progress=False, patch=7)
    with pytest.raises(ValueError, match="model.patch 64"):
        train(model, bank, t, str(tmp_path / "big"), 0, progress=False, patch=64)
    config = load_config("physics_seg")                        # and before any simulation
    with config.unlocked():
        config.model.patch = 7
    with pytest.raises(InputError, match=r"config\.model\.patch=7"):
        check_config(config)
    variables = init_params(model, (8, 8), 3, 0)
    seg = Segmenter.load(Segmenter(settings, variables).save(str(tmp_path / "model")))
    image = bank.images[0].astype(np.float32)                     # (Z, H, W) padded slices
    pads, _ = grid(heads[0].mask.shape, 2)
    vol = np.moveaxis(image, 0, -1)[pads[0][0]:image.shape[1] - pads[0][1],
                                    pads[1][0]:image.shape[2] - pads[1][1]]
    mask = heads[0].mask
    got = seg.predict(vol, mask, None)
    x = with_context(to_slices(np.where(mask, vol, 0.0), pads), 1)
    apply = jax.jit(lambda v, t: jax.nn.softmax(model.apply(v, t, None)))
    want = tiled(lambda tiles, b: np.asarray(apply(variables, jnp.asarray(tiles))), x, None, 8)
    want = np.moveaxis(want, 0, -2)[pads[0][0]:x.shape[1] - pads[0][1],
                                    pads[1][0]:x.shape[2] - pads[1][1]]
    np.testing.assert_allclose(got, np.where(mask[..., None], want, 0.0), atol=1e-5)
    whole = Segmenter({**settings, "patch": 0}, variables).predict(vol, mask, None)
    assert not np.allclose(got, whole, atol=1e-3)                # the window changes the output


def test_cube_batches_are_sub_volumes_centred_on_brain():
    """``model.ndim=3``: a 3-D batch is, per sample, the ``P``-cube of that volume's images,
    gold standard, mask and B1+ (oracle: the bank's arrays indexed by hand) whose in-plane
    window is the 2-D window batch's and whose slices are centred on the sampled slice
    (shifted inside the volume); unknown B1+ stays NaN; paired halves share their cubes; a
    cube deeper than the volume, or 3-D without a cube size, is refused."""
    from phyjax.data import simulated
    from phyjax.segment import simulate

    heads = simulated.anatomies(2, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (0.9, 1.1), "b1_curvature": (0.0, 0.1), "bias_amplitude": (0.0, 0.1),
               "noise_fraction": (0.01, 0.02), "slice_fwhm": (0.0, 0.0), "gain": (1.0, 1.0)}
    bank = simulate.SliceBank(heads, ("spgr",), simulate.PAPER_RANGES, 3, effects, 2, 0.15, 1, 0)
    n_z = bank.images.shape[1]
    for paired in (False, True):
        full = bank.batch(5, 8, 0, b1_known=0.5, paired=paired)
        win = bank.batch(5, 8, 0, b1_known=0.5, paired=paired, patch=8)
        cube = bank.batch(5, 8, 0, b1_known=0.5, paired=paired, patch=8, ndim=3)
        rng = np.random.default_rng([0, 5, 16])   # the rows the batch samples, as it draws them
        n = 4 if paired else 8
        rows = bank.rows[rng.choice(len(bank.rows), size=n, replace=len(bank.rows) < n)]
        # the in-plane windows, from the crop stream as in the 2-D window test
        corners = simulate.SliceBank.crop(full["mask"][:n, ..., 0], 8,
                                          np.random.default_rng([0, 5, 16, 2]))
        if paired:
            other = bank.partners(rows[:, 0], np.random.default_rng([0, 5, 16, 1]))
            rows = np.concatenate([rows, np.stack([other, rows[:, 1]], -1)])
            corners = np.concatenate([corners, corners])
        assert cube["x"].shape == (8, 8, 8, 8, 1) and cube["y"].shape == (8, 8, 8, 8, 3)
        assert cube["mask"].shape == (8, 8, 8, 8, 1) and cube["b1"].shape == (8, 8, 8, 8)
        for j, ((v, z), (r, c)) in enumerate(zip(rows, corners)):
            z0 = int(np.clip(z - 4, 0, n_z - 8))
            sl = (slice(z0, z0 + 8), slice(r, r + 8), slice(c, c + 8))
            np.testing.assert_array_equal(win["x"][j, ..., 1],          # the same window in 2-D
                                          bank.images[v, z, r:r + 8, c:c + 8])
            np.testing.assert_array_equal(cube["x"][j, ..., 0], bank.images[v][sl])
            np.testing.assert_array_equal(cube["y"][j], bank.gold[bank.volume_gold[v]][sl])
            np.testing.assert_array_equal(cube["mask"][j, ..., 0],
                                          bank.masks[bank.volume_anatomy[v]][sl])
            if np.isnan(win["b1"][j]).all():
                assert np.isnan(cube["b1"][j]).all()
            else:
                np.testing.assert_array_equal(cube["b1"][j], bank.b1[v][sl])
            assert cube["mask"][j].sum() > 0
        if paired:
            np.testing.assert_array_equal(cube["mask"][:4], cube["mask"][4:])
        np.testing.assert_array_equal(cube["params"], win["params"])
    assert np.isnan(cube["b1"]).all(axis=(1, 2, 3)).any()      # some samples told nothing
    with pytest.raises(ValueError, match="does not fit volumes"):
        bank.batch(0, 4, 0, patch=(n_z // 2 + 1) * 2, ndim=3)
    with pytest.raises(ValueError, match="cube size"):
        bank.batch(0, 4, 0, ndim=3)


def test_tiled_volume_averages_overlapping_cubes():
    """:func:`phyjax.segment.train.tiled_volume` against a direct loop over every cube: a
    cube-dependent function (each cube's mean) is averaged over the cubes covering each voxel;
    a voxel-wise one comes back unchanged (B1+ included); a volume smaller than the cube is
    padded and cropped back."""
    from phyjax.segment.train import tile_starts, tiled_volume

    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 10, 9, 1)).astype(np.float32)
    calls = []

    def cube_mean(cubes, b1):
        calls.append(cubes.shape)
        return np.broadcast_to(cubes.mean((1, 2, 3, 4), keepdims=True), cubes.shape)

    got = tiled_volume(cube_mean, x, None, 8)
    acc, cnt = np.zeros(x.shape), np.zeros(x.shape)
    for a in tile_starts(12, 8):
        for b in tile_starts(10, 8):
            for c in tile_starts(9, 8):
                acc[a:a + 8, b:b + 8, c:c + 8] += x[a:a + 8, b:b + 8, c:c + 8].mean()
                cnt[a:a + 8, b:b + 8, c:c + 8] += 1
    np.testing.assert_allclose(got, acc / cnt, rtol=1e-5, atol=1e-6)
    assert calls == [(2 * 2 * 2, 8, 8, 8, 1)]      # starts (0, 4), (0, 2), (0, 1)
    b1 = rng.uniform(0.8, 1.2, size=x.shape[:3]).astype(np.float32)
    np.testing.assert_allclose(tiled_volume(lambda t, b: b[..., None], x, b1, 8)[..., 0], b1,
                               rtol=1e-6)
    small = x[:6, :5, :7]
    np.testing.assert_allclose(tiled_volume(lambda t, b: t * 3.0, small, None, 8), 3 * small,
                               rtol=1e-6)


def test_a_3d_segmenter_trains_on_cubes_and_segments_cube_by_cube(tmp_path):
    """``model.ndim=3``: a 3-D physics U-Net trains on cubes (two steps, loss finite), is saved
    and reloaded with its ``ndim``, and segments a volume cube by cube: its probabilities equal
    :func:`tiled_volume` over the 3-D network applied by hand; changing the protocol changes
    them; the config refuses 3-D without a cube size and an ndim other than 2 or 3."""
    from phyjax.data import simulated
    from phyjax.data.slices import grid, to_slices
    from phyjax.experiments.physics_seg import check_config
    from phyjax.segment import simulate
    from phyjax.segment.model import physics_vector
    from phyjax.segment.train import Segmenter, make_model, tiled_volume, train

    heads = simulated.anatomies(1, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (1.0, 1.0), "b1_curvature": (0.0, 0.0), "bias_amplitude": (0.0, 0.0),
               "noise_fraction": (0.01, 0.01), "slice_fwhm": (0.0, 0.0), "gain": (1.0, 1.0)}
    bank = simulate.SliceBank(heads, ("spgr",), simulate.PAPER_RANGES, 2, effects, 2, 0.15, 1, 0)
    settings = {"features": [4, 8], "physics": True, "branch_width": 8, "context": 1,
                "conditioning": "add+contrast", "physics_size": PHYSICS_SIZE, "patch": 8,
                "ndim": 3}
    t = types.SimpleNamespace(steps=2, batch_size=2, learning_rate=1e-3, checkpoint_every=2,
                              log_every=1, get=lambda k, d=None: {"loss": "ce"}.get(k, d))
    model = make_model(settings)
    assert model.ndim == 3
    with pytest.raises(ValueError, match="cubes"):
        train(model, bank, t, str(tmp_path / "none"), 0, progress=False, patch=0)
    variables = train(model, bank, t, str(tmp_path / "train"), 0, progress=False, patch=8)
    with open(tmp_path / "train" / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    assert len(log) == 2 and all(np.isfinite(float(r["loss"])) for r in log)
    seg = Segmenter.load(Segmenter(settings, variables).save(str(tmp_path / "model")))
    assert seg.ndim == 3
    image = bank.images[0].astype(np.float32)
    pads, _ = grid(heads[0].mask.shape, 2)
    vol = np.moveaxis(image, 0, -1)[pads[0][0]:image.shape[1] - pads[0][1],
                                    pads[1][0]:image.shape[2] - pads[1][1]]
    mask = heads[0].mask
    params = bank.params[0]
    got = seg.predict(vol, mask, params)
    x = to_slices(np.where(mask, vol, 0.0), pads)[..., None]
    apply = jax.jit(lambda v, t, p: jax.nn.softmax(model.apply(v, t, p)))

    def by_hand(cubes, b1):
        p = np.broadcast_to(params, (len(cubes), len(params)))
        return np.asarray(apply(variables, jnp.asarray(cubes), jnp.asarray(p)))

    want = np.moveaxis(tiled_volume(by_hand, x, None, 8), 0, -2)
    want = want[pads[0][0]:x.shape[1] - pads[0][1], pads[1][0]:x.shape[2] - pads[1][1]]
    np.testing.assert_allclose(got, np.where(mask[..., None], want, 0.0), atol=1e-5)
    assert got.shape == mask.shape + (3,)
    other = physics_vector(bank.protocols[1])
    assert not np.allclose(seg.predict(vol, mask, other), got, atol=1e-4)
    config = load_config("physics_seg")
    with config.unlocked():
        config.model.ndim = 3
    with pytest.raises(InputError, match=r"config\.model\.ndim=3"):
        check_config(config)
    with config.unlocked():
        config.model.ndim, config.model.patch = 4, 8
    with pytest.raises(InputError, match=r"config\.model\.ndim=4"):
        check_config(config)


def test_branch_dropout_trains_both_modes_and_averages_them_at_inference(tmp_path):
    """``train.branch_dropout``: ``branch_keep`` = 0 makes the U-Net's output independent of the
    protocol (the branch is off), 1 is the ordinary branch; training draws the keep mask per
    sample from (seed, step) at the given rate; a Segmenter saved with ``branch_dropout`` > 0
    segments with the mean of the branch-on and branch-off probabilities (oracle: the two
    passes applied by hand), one without it with the branch on only."""
    from phyjax.data import simulated
    from phyjax.data.slices import grid, to_slices, with_context
    from phyjax.segment import simulate
    from phyjax.segment.train import Segmenter, make_model, train

    x = jnp.asarray(np.random.default_rng(2).random((2, 16, 16, 1)), jnp.float32)
    early, late = (jnp.asarray(np.repeat(physics_vector(p)[None], 2, 0))
                   for p in (MPRAGE_EARLY, MPRAGE_LATE))
    model = SegmentationUNet(features=(4, 8), branch_width=8, conditioning="add+contrast")
    variables = _numpy_init(model, x, early)
    off, on = jnp.zeros(2), jnp.ones(2)
    np.testing.assert_array_equal(model.apply(variables, x, early, None, None, off),
                                  model.apply(variables, x, late, None, None, off))
    np.testing.assert_array_equal(model.apply(variables, x, early, None, None, on),
                                  model.apply(variables, x, early))
    mixed = model.apply(variables, x, early, None, None, jnp.asarray([1.0, 0.0]))
    np.testing.assert_array_equal(mixed[0], model.apply(variables, x, early)[0])
    np.testing.assert_array_equal(mixed[1], model.apply(variables, x, late, None, None, off)[1])
    assert float(jnp.max(jnp.abs(model.apply(variables, x, early)
                                 - model.apply(variables, x, late)))) > 1e-3

    heads = simulated.anatomies(1, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (1.0, 1.0), "b1_curvature": (0.0, 0.0), "bias_amplitude": (0.0, 0.0),
               "noise_fraction": (0.01, 0.01), "slice_fwhm": (0.0, 0.0), "gain": (1.0, 1.0)}
    bank = simulate.SliceBank(heads, ("spgr",), simulate.PAPER_RANGES, 2, effects, 2, 0.15, 1, 0)
    settings = {"features": [4, 8], "physics": True, "branch_width": 8, "context": 1,
                "conditioning": "add+contrast", "physics_size": PHYSICS_SIZE,
                "branch_dropout": 0.5}
    seen = []

    class Spy:
        """The bank, recording the batches training draws."""

        def __getattr__(self, name):
            return getattr(bank, name)

        def batch(self, *args, **kwargs):
            b = bank.batch(*args, **kwargs)
            seen.append(b)
            return b

    rates = {"loss": "ce", "branch_dropout": 0.5}
    t = types.SimpleNamespace(steps=6, batch_size=8, learning_rate=1e-3, checkpoint_every=6,
                              log_every=1, get=lambda k, d=None: rates.get(k, d))
    net = make_model(settings)
    trained = train(net, Spy(), t, str(tmp_path / "run"), 0, progress=False)
    assert len(seen) == 6
    for i, b in enumerate(seen):   # step i's mask is the one (seed, i) gives
        np.testing.assert_array_equal(
            b["keep"], (np.random.default_rng([0, i, 0xD0]).random(8) >= 0.5).astype(np.float32))
    assert 0.25 < np.mean([b["keep"] for b in seen]) < 0.75
    rates["branch_dropout"] = 1.0
    with pytest.raises(ValueError, match="branch_dropout"):
        train(net, bank, t, str(tmp_path / "bad"), 0, progress=False)

    seg = Segmenter.load(Segmenter(settings, trained).save(str(tmp_path / "model")))
    assert seg.averaged
    image = bank.images[0].astype(np.float32)
    pads, _ = grid(heads[0].mask.shape, 2)
    vol = np.moveaxis(image, 0, -1)[pads[0][0]:image.shape[1] - pads[0][1],
                                    pads[1][0]:image.shape[2] - pads[1][1]]
    mask = heads[0].mask
    p = physics_vector(Protocol.from_degrees("spgr", tr=0.03, te=0.005, flip_angle_deg=30.0))
    got = seg.predict(vol, mask, p)
    xs = jnp.asarray(with_context(to_slices(np.where(mask, vol, 0.0), pads), 1))
    ps = jnp.asarray(np.repeat(p[None], len(xs), 0))
    keep = [jnp.full(len(xs), k, jnp.float32) for k in (1.0, 0.0)]
    want = np.mean([np.asarray(jax.nn.softmax(net.apply(trained, xs, ps, None, None, k)))
                    for k in keep], 0)
    want = np.moveaxis(want, 0, -2)[pads[0][0]:xs.shape[1] - pads[0][1],
                                    pads[1][0]:xs.shape[2] - pads[1][1]]
    np.testing.assert_allclose(got, np.where(mask[..., None], want, 0.0), atol=1e-5)
    plain = Segmenter({**settings, "branch_dropout": 0.0}, trained)
    assert not plain.averaged
    assert not np.allclose(plain.predict(vol, mask, p), got, atol=1e-4)


def test_a_workdir_trained_with_other_training_settings_is_not_resumed(tmp_path):
    """The resume check covers the train section: a run with other steps, loss or protocol
    jitter would otherwise pick up the old segmenters and report them under the new settings."""
    from phyjax.experiments import registry

    config = load_config("physics_seg")
    workdir = tmp_path / "run"
    os.makedirs(workdir / "physics" / "checkpoints")
    old = json.loads(config.to_json())
    old["train"]["steps"] = config.train.steps + 100
    (workdir / "config.json").write_text(json.dumps(old))
    with pytest.raises(InputError, match="different 'train' config"):
        registry.run(config, str(workdir))


def test_every_native_mask_voxel_gets_probabilities_after_resampling_back():
    """A segmenter run on a coarser grid: native mask voxels beyond the coarse mask's edge (a
    1-voxel strand) take their nearest tissue probabilities, summing to 1 -- before, they got
    (0, 0, 0), were dropped from the volumes and labelled CSF."""
    from phyjax.segment.infer import segment_image

    class AllWhiteMatter:
        physics, b1_input = False, False

        def __init__(self):
            self.settings = {"voxel_mm": 2.0, "ranges": {}}

        def predict(self, image, mask, params, b1=None):
            p = np.zeros(image.shape + (3,), np.float32)
            p[..., 2] = 1.0
            return np.where(mask[..., None], p, 0.0)

    shape = (40, 40, 40)
    mask = np.zeros(shape, bool)
    mask[10:30, 10:30, 10:30] = True
    mask[20, 20, 30:36] = True
    img = types.SimpleNamespace(affine=np.eye(4))
    image = np.random.default_rng(0).random(shape).astype(np.float32) + 1
    probs = segment_image(AllWhiteMatter(), image, img, mask, None)
    np.testing.assert_allclose(probs.sum(-1)[mask], 1.0, atol=1e-5)
    assert np.all(evaluate.labels(probs, mask)[mask] == 3)
    assert evaluate.volumes_ml(probs, 1.0)["wm"] == pytest.approx(mask.sum() / 1000, rel=1e-5)
