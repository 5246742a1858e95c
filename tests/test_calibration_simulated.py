"""config.model.calibrate_with / calibrate_simulated: site maps learned on heads made by the
physics (phyjax.data.simulated.calibration_volumes, phyjax.methods.calibration.fit_calibrated,
docs/phycharm_ablation.md items 69, 70), and a site's scanner effects read off its own scans
(phyjax.data.simulated.fit_site_effects)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phyjax.data import simulated, synthetic
from phyjax.data.nifti import InputError
from phyjax.data.split import Split
from phyjax.data.volumes import Volume, normalize
from phyjax.methods.calibration import (CalibrationHeads, calibrate_output,
                                        check_calibrate_simulated, fit_calibrated, maps_source,
                                        plan_site_maps)
from phyjax.physics import scanner
from phyjax.physics.sequences import Protocol

TARGET = Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0, 3.0)
SE = Protocol.from_degrees("se", 0.5, 0.015, 0.0, 90.0, 1.5)
SPGR = Protocol.from_degrees("spgr", 0.02, 0.004, 0.0, 20.0, 3.0)


@pytest.fixture(scope="module")
def heads():
    return simulated.anatomies(2, 0, 2, 4.0, 0.05, 0.05, first=simulated.CALIBRATION_HEADS_FIRST)


@pytest.fixture(scope="module")
def affine():
    return synthetic.load_anatomy(2)[2]


def test_heads_are_indexed_and_the_calibration_range_is_not_the_training_one():
    # anatomies(first=k) continues the same sequence of heads: its j-th head is anatomies'
    # (k + j)-th; the calibration heads (from CALIBRATION_HEADS_FIRST) are other heads than
    # the physics-made training heads (from 0).
    a = simulated.anatomies(3, 0, 2, 4.0, 0.05, 0.05)
    b = simulated.anatomies(2, 0, 2, 4.0, 0.05, 0.05, first=1)
    np.testing.assert_array_equal(a[1].probs, b[0].probs)
    np.testing.assert_array_equal(a[2].factors, b[1].factors)
    c = simulated.anatomies(1, 0, 2, 4.0, 0.05, 0.05, first=simulated.CALIBRATION_HEADS_FIRST)
    assert not np.array_equal(a[0].probs, c[0].probs)


def test_calibration_volumes_are_the_simulator_s_scans(heads, affine):
    # Every scan against synthetic.acquire called directly: the target clean with the
    # target's key, each source with the effects source_effects draws for its key -- the
    # sidecar's slice profile replacing the drawn one where one is given.
    vols = simulated.calibration_volumes([SE, SPGR], ["se1p5T2D", "spgr3T"], TARGET, "ref",
                                         heads, affine, seed=3, slice_profiles=[(2.5, 2), None])
    assert sorted(vols) == ["physics-01", "physics-02"]
    key = jax.random.key(simulated.ANATOMY_SEED + 500_000 + 3)
    for a, (subject, head) in enumerate(zip(sorted(vols), heads)):
        scans = vols[subject]
        assert sorted(scans) == ["ref", "se1p5T2D", "spgr3T"]
        mask = head.mask
        want = synthetic.acquire(head.maps(3.0), mask, TARGET, scanner.ScannerEffects(),
                                 jax.random.fold_in(key, 10_000 + a))
        np.testing.assert_allclose(scans["ref"].image, normalize(want, mask), atol=1e-6)
        for p_i, (site, p, profile) in enumerate([("se1p5T2D", SE, (2.5, 2)),
                                                  ("spgr3T", SPGR, None)]):
            v = scans[site]
            assert v.protocol is p and v.subject == subject and v.site == site
            np.testing.assert_array_equal(v.mask, mask)
            np.testing.assert_array_equal(v.grid_affine(), affine)
            k_fx, k_acq = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, a), p_i))
            effects = scanner.sample_scanner_effects(k_fx, **simulated.EFFECT_RANGES)
            if profile is not None:
                effects = effects.replace(slice_fwhm=profile[0])
            want = synthetic.acquire(head.maps(p.field_strength), mask, p, effects, k_acq,
                                     slice_axis=profile[1] if profile else -1)
            np.testing.assert_allclose(v.image, normalize(want, mask), atol=1e-6)
    # a 5 mm spin echo is blurred along its slice axis: neighbouring slices agree more there
    se = vols["physics-01"]["se1p5T2D"].image
    assert np.abs(np.diff(se, axis=2)).mean() < np.abs(np.diff(se, axis=0)).mean()


def test_given_effects_replace_the_drawn_ones(heads, affine):
    # A site's own effects, where given, are used as they are: the scan is synthetic.acquire's
    # with those effects and the same acquisition key; a source without them keeps its draw.
    own = scanner.ScannerEffects(b1_scale=1.1, b1_curvature=0.15, bias_amplitude=0.3,
                                 noise_fraction=0.03, gain=1.6)
    drawn = simulated.calibration_volumes([SE, SPGR], ["a", "b"], TARGET, "ref", heads[:1],
                                          affine, seed=0)
    given = simulated.calibration_volumes([SE, SPGR], ["a", "b"], TARGET, "ref", heads[:1],
                                          affine, seed=0, effects=[None, own])
    np.testing.assert_array_equal(drawn["physics-01"]["a"].image, given["physics-01"]["a"].image)
    key = jax.random.key(simulated.ANATOMY_SEED + 500_000)
    k_acq = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 0), 1))[1]
    head = heads[0]
    want = synthetic.acquire(head.maps(3.0), head.mask, SPGR, own, k_acq)
    np.testing.assert_allclose(given["physics-01"]["b"].image, normalize(want, head.mask),
                               atol=1e-6)
    assert not np.allclose(given["physics-01"]["b"].image, drawn["physics-01"]["b"].image)


def test_calibration_volumes_refuse_mismatched_names(heads, affine):
    with pytest.raises(ValueError, match="2 site names"):
        simulated.calibration_volumes([SE], ["a", "b"], TARGET, "ref", heads, affine, 0)
    with pytest.raises(ValueError, match="2 slice profiles"):
        simulated.calibration_volumes([SE], ["a"], TARGET, "ref", heads, affine, 0,
                                      slice_profiles=[None, None])
    with pytest.raises(ValueError, match="2 effects"):
        simulated.calibration_volumes([SE], ["a"], TARGET, "ref", heads, affine, 0,
                                      effects=[None, None])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", None, True])
def test_bad_counts_name_the_key(bad):
    with pytest.raises(InputError, match=r"config\.model\.calibrate_simulated"):
        check_calibrate_simulated(bad)
    assert check_calibrate_simulated(1) == 1 and check_calibrate_simulated(4) == 4


@pytest.mark.parametrize("with_,paired,calibrate,want", [
    ("auto", True, "sites", "traveling"), ("auto", False, "sites", "physics"),
    ("traveling", True, "sites", "traveling"), ("traveling", False, "sites", "none"),
    ("physics", True, "sites", "physics"), ("physics", False, "sites", "physics"),
    ("auto", True, "none", "none"), ("physics", False, "p99", "none")])
def test_maps_source(with_, paired, calibrate, want):
    assert maps_source({"calibrate": calibrate, "calibrate_with": with_}, paired) == want


def test_an_unknown_maps_source_names_the_key():
    with pytest.raises(InputError, match=r"config\.unet\.calibrate_with='both'"):
        maps_source({"calibrate": "sites", "calibrate_with": "both"}, True, "unet")


# A stand-in: traveling subjects "00".."05" scanned at "ref" and "a", and heads "made by the
# physics" "p0".."p3" with the same two protocols.  The stand-in network returns the target
# of every head it trained on exactly, and on any other head at site "a" the target through
# an increasing distortion g -- what a network that memorized its training heads does.
MASK = np.zeros((10, 10, 8), bool)
MASK[1:9, 1:9, 1:7] = True
PA = Protocol.from_degrees("mprage", 2.0, 0.003, 0.9, 8.0, 1.5)


def _head(subject, rng):
    levels = rng.choice([0.3, 0.7, 1.0], MASK.shape, p=[0.2, 0.4, 0.4])
    t = np.where(MASK, levels + rng.normal(0, 0.03, MASK.shape), 0).astype(np.float32)
    return {site: Volume(subject, site, p, t, MASK, f"{subject}_{site}.nii.gz")
            for site, p in (("ref", TARGET), ("a", PA))}


def _g(x):
    return 0.2 + 0.5 * x ** 2


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    volumes = {f"{k:02d}": _head(f"{k:02d}", rng) for k in range(6)}
    volumes["99"] = _head("99", rng)
    train = Split(tuple(f"{k:02d}" for k in range(6)), ("99",)).training_set(volumes, "ref")
    physics = CalibrationHeads({f"p{k}": _head(f"p{k}", rng) for k in range(4)}, "ref")
    everyone = dict(volumes, **physics.volumes)

    class Memorizing:
        def __init__(self, seen):
            self.seen, self.cfg = set(seen), {"calibrate": "sites"}

        def harmonize(self, v, z_slices=None):
            t = everyone[v.subject]["ref"].image
            new = v.subject not in self.seen and v.site == "a"
            return np.where(MASK, _g(t) if new else t, 0).astype(np.float32)

    return train, volumes, physics, Memorizing


def _settings(**kw):
    return dict({"calibrate": "sites", "calibrate_heads": 0, "calibrate_knots": 64,
                 "calibrate_slice_step": 1}, **kw)


def test_physics_made_maps_correct_a_memorizing_network_on_new_heads(world):
    # The mechanism: maps from the network's own training heads are the identity and leave g
    # on a new head; maps from heads made by the physics (which it never saw) invert g.  The
    # network still trains on every traveling subject, and the physics heads are asked for
    # only once, with the configured count.
    train, volumes, physics, Memorizing = world
    asked, trained_on = [], []

    def fit_network(subset):
        trained_on.append(subset.subjects)
        return Memorizing(subset.subjects)

    def physics_heads(t, n):
        asked.append((t, n))
        return physics

    new_head = {"harmonized": Memorizing(train.subjects).harmonize(volumes["99"]["a"])}
    target = volumes["99"]["ref"].image

    def error(harm):
        got = calibrate_output(new_head, MASK, "sites", site_maps=harm.cfg["site_maps"],
                               protocol=PA)
        return np.abs(got["harmonized"] - target)[MASK].mean()

    own = fit_calibrated(fit_network, train, _settings(), 0, "model", progress=False,
                         physics_heads=physics_heads)
    assert asked == [] and error(own) > 0.1
    harm = fit_calibrated(fit_network, train, _settings(calibrate_with="physics",
                                                        calibrate_simulated=4), 0, "model",
                          progress=False, physics_heads=physics_heads)
    assert trained_on[-1] == train.subjects and asked == [(train, 4)]
    assert error(harm) < 0.01
    assert harm.cfg["calibration_subjects"] == ["p0", "p1", "p2", "p3"]
    assert harm.fitted_on == set(train.subjects)
    # without traveling subjects (paired False) "auto" learns them on the physics' heads
    unpaired = fit_calibrated(fit_network, train, _settings(calibrate_simulated=4), 0, "model",
                              paired=False, progress=False, physics_heads=physics_heads)
    assert unpaired.cfg["calibrate"] == "sites" and error(unpaired) < 0.01
    assert asked[-1] == (train, 4)
    # ... "traveling" has none to learn them on (the fallback), and neither has a method
    # without the physics under "auto"
    for settings, heads in ((_settings(calibrate_with="traveling"), physics_heads),
                            (_settings(), None)):
        none = fit_calibrated(fit_network, train, settings, 0, "model", paired=False,
                              progress=False, physics_heads=heads)
        assert none.cfg["calibrate"] == "none" and none.cfg["calibration_subjects"] == []
    # with traveling subjects "auto" keeps theirs, also for a method without the physics
    kept = fit_calibrated(fit_network, train, _settings(), 0, "unet", progress=False)
    assert error(kept) > 0.1 and kept.cfg["calibration_subjects"] == list(train.subjects)


def test_refusals_name_the_keys(world):
    train, _, physics, Memorizing = world
    with pytest.raises(InputError, match=r"calibrate_heads=1 holds traveling subjects out.*"
                                         r"calibrate_with='physics'"):
        fit_calibrated(Memorizing, train, _settings(calibrate_with="physics", calibrate_heads=1),
                       0, "model", progress=False, physics_heads=lambda t, n: physics)
    with pytest.raises(InputError, match=r"config\.unet\.calibrate_with='physics': unet has "
                                         "no physics"):
        fit_calibrated(Memorizing, train, _settings(calibrate_with="physics"), 0, "unet",
                       progress=False, name="unet")
    with pytest.raises(InputError, match=r"config\.model\.calibrate_simulated=-2"):
        fit_calibrated(Memorizing, train, _settings(calibrate_simulated=-2), 0, "model",
                       paired=False, progress=False, physics_heads=lambda t, n: physics)


def test_phycharm_without_traveling_subjects_learns_site_maps_on_physics_heads(tmp_path,
                                                                              monkeypatch):
    # phycharm_unpaired on the debug data with calibrate_simulated=1 (calibrate_with "auto"):
    # one head made by the physics, imaged with every source protocol of the training set and
    # the target's; the model has a site map for each of those protocols, learned on that one
    # head, and keeps them through save and load.  Trained for a range of targets
    # (target.randomize), it harmonizes to another one of them without the maps (learned for
    # the fitted target), saying so, and to the fitted one with them.
    import conftest
    from phyjax import methods
    from phyjax.data.dataset import load_dataset
    from phyjax.data.split import protocols_match
    from phyjax.methods.base import protocol_from_json

    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path / "cache")
        cfg.model.calibrate_simulated = 1
        cfg.model.calibrate_effects = "auto"
        cfg.target.randomize = True
    data = load_dataset(cfg.data, progress=False)

    def no_fit(*args, **kwargs):    # the debug data's subjects travel, but this model never
        raise AssertionError("fit_site_effects read target-site scans")   # sees a target scan
    monkeypatch.setattr(simulated, "fit_site_effects", no_fit)
    train = data.training_set(data.split(cfg.data.n_test, cfg.data.seed))
    harm = methods.fit("phycharm_unpaired", cfg, train, workdir=str(tmp_path / "run"),
                       progress=False, has_maps=data.has_maps)
    assert harm.cfg["calibrate"] == "sites"
    assert harm.cfg["calibration_subjects"] == ["physics-01"]
    sources = [v.protocol for s in train.subjects for site, v in train.volumes[s].items()
               if site != train.target_site]
    maps = harm.cfg["site_maps"]
    assert {m["subjects"] for m in maps} == {1}
    assert len(maps) == len(simulated.distinct(sources))
    for p in sources:
        assert sum(protocols_match(protocol_from_json(m["protocol"]), p) for m in maps) == 1
    for m in maps:
        assert np.all(np.diff(m["output"]) >= 0) and np.all(np.diff(m["target"]) >= 0)
    methods.save(harm, str(tmp_path / "saved"))
    again = methods.load(str(tmp_path / "saved"))
    assert again.cfg["site_maps"] == maps
    assert again.cfg["calibration_subjects"] == ["physics-01"]

    subject = sorted(set(data.volumes) - set(train.subjects))[0]
    volume = next(v for site, v in sorted(data.volumes[subject].items())
                  if site != data.target_site)
    fitted = harm.target_protocol
    other = dataclasses.replace(fitted, ti=fitted.ti + 0.1)
    raw = dict(harm.cfg)
    harm.cfg = dict(raw, calibrate="none")
    uncalibrated = {t: harm.predict(volume, t)["harmonized"] for t in (fitted, other)}
    harm.cfg = raw
    with pytest.warns(UserWarning, match="learned for the fitted target"):
        got = harm.predict(volume, other)["harmonized"]
    np.testing.assert_array_equal(got, uncalibrated[other])
    mapped = harm.predict(volume, fitted)["harmonized"]
    assert not np.allclose(mapped, uncalibrated[fitted])
    assert harm.maps_apply(fitted) and not harm.maps_apply(other) and harm.maps_apply(None)


@pytest.mark.parametrize("true", [
    dict(b1_scale=0.9, b1_curvature=0.0, bias_amplitude=0.3, noise_fraction=0.01),
    dict(b1_scale=1.1, b1_curvature=0.2, bias_amplitude=0.0, noise_fraction=0.05)])
def test_fit_site_effects_reads_the_effects_a_scan_was_made_with(heads, affine, true):
    # Oracle: scans imaged by synthetic.acquire with known effects (another gain, other bias
    # and noise draws) on the heads the fit simulates: the B1+ scale, bias amplitude and noise
    # it returns are those they were made with.  The B1+ drop is not asserted: with another
    # bias draw, a smooth drop and a smooth bias field explain each other (the first case
    # returns drop 0.2 for 0).
    effects = scanner.ScannerEffects(gain=1.7, **true)
    # with its readout train, where B1+ scales the readout flip angle (the static form ignores it)
    mprage = dataclasses.replace(Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0, 3.0),
                                 tr_readout=0.0071, n_readouts=176.0)
    scans = []
    for a, head in enumerate(heads):
        image = synthetic.acquire(head.maps(3.0), head.mask, mprage, effects,
                                  jax.random.key(100 + a))
        scans.append(Volume("s", "x", mprage, normalize(image, head.mask), head.mask, "x"))
    grid = {"b1_scale": (0.9, 1.0, 1.1), "b1_curvature": (0.0, 0.2),
            "bias_amplitude": (0.0, 0.3), "noise_fraction": (0.01, 0.05)}
    got, distance = simulated.fit_site_effects(mprage, scans, heads, grid=grid)
    keys = ("b1_scale", "bias_amplitude", "noise_fraction")
    assert {k: getattr(got, k) for k in keys} == {k: true[k] for k in keys}
    assert distance < 0.01
    # against a reference (the same heads scanned clean with another protocol, as traveling
    # subjects at the target site would be) it reads the same B1+ scale and noise
    target = dataclasses.replace(Protocol.from_degrees("mprage", 2.4, 0.002, 1.0, 8.0, 3.0),
                                 tr_readout=0.0076, n_readouts=256.0)
    refs = [Volume("s", "ref", target, normalize(image, head.mask), head.mask, "r")
            for head in heads for image in [synthetic.acquire(
                head.maps(3.0), head.mask, target, scanner.ScannerEffects(gain=0.5),
                jax.random.key(200))]]
    got, _ = simulated.fit_site_effects(mprage, scans, heads, grid=grid,
                                        reference=(target, refs))
    assert (got.b1_scale, got.noise_fraction) == (true["b1_scale"], true["noise_fraction"])
    with pytest.raises(InputError, match="no reference scan"):
        simulated.fit_site_effects(mprage, scans, heads, grid=grid, reference=(target, []))
    with pytest.raises(InputError, match="no scan with voxels"):
        simulated.fit_site_effects(mprage, [], heads, grid=grid)


def test_where_the_signal_ignores_b1_the_fit_says_ideal_pulses(heads):
    # A spin echo's signal equation has no B1+ (ideal pulses): every B1+ point of the grid
    # gives the same images, and the fit reports the ideal pulse, not the grid's first point.
    image = synthetic.acquire(heads[0].maps(1.5), heads[0].mask, SE,
                              scanner.ScannerEffects(noise_fraction=0.03), jax.random.key(5))
    scans = [Volume("s", "x", SE, normalize(image, heads[0].mask), heads[0].mask, "x")]
    got, _ = simulated.fit_site_effects(SE, scans, heads[:1], grid={
        "b1_scale": (0.8, 0.9, 1.0, 1.1), "b1_curvature": (0.0, 0.2), "bias_amplitude": (0.0,),
        "noise_fraction": (0.01, 0.03)})
    assert (got.b1_scale, got.b1_curvature, got.noise_fraction) == (1.0, 0.0, 0.03)


def test_the_output_sidecar_says_when_the_maps_were_not_applied():
    # harmonize mode's sidecar names the site map a scan went through, and says "uncalibrated"
    # where the requested target is not the one the maps were learned for
    from types import SimpleNamespace

    from phyjax.experiments.harmonize import output_sidecar
    from phyjax.methods.base import protocol_to_json

    maps = [{"protocol": protocol_to_json(SPGR), "sites": ["spgr3T"], "subjects": 8,
             "output": [0.0, 1.0], "target": [0.0, 1.0]}]
    other = dataclasses.replace(TARGET, ti=TARGET.ti + 0.1)
    harm = SimpleNamespace(name="phycharm", target_site="ref", target_protocol=TARGET,
                           fitted_on=frozenset(), check_target=lambda t: None,
                           maps_apply=lambda t: t is TARGET,
                           cfg={"calibrate": "sites", "site_maps": maps})
    reading = SimpleNamespace(protocol=lambda: SPGR, values={}, origin={}, assumed=[], notes=[])
    got = {t: output_sidecar(harm, reading, "x.nii.gz", t)["PhyjaxHarmonizer"]
           ["calibrate_site_map"] for t in (TARGET, other)}
    assert got == {TARGET: ["spgr3T"], other: "learned for the fitted target only: uncalibrated"}


def test_fitted_effects_are_each_site_s_own_and_unknown_ones_are_refused(tmp_path, monkeypatch):
    # calibrate_effects="fitted": each source protocol is simulated with what fit_site_effects
    # reads off that site's own training scans (stood in for here, recording what it was
    # given), the slice profile its sidecar gives replacing the fitted one; an unknown value
    # names the key.
    import conftest
    from phyjax.data.dataset import load_dataset
    from phyjax.methods.phycharm import calibration_heads

    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path / "cache")
        cfg.model.calibrate_effects = "fitted"
    data = load_dataset(cfg.data, progress=False)
    train = data.training_set(data.split(cfg.data.n_test, cfg.data.seed))
    calls = []

    def fake_fit(p, scans, heads, profile=None, seed=0, grid=None, reference=None):
        # the traveling subjects' target-site scans are the reference, subject for subject
        assert reference[0] is train.target_protocol()
        assert [v.subject for v in reference[1]] == [v.subject for v in scans]
        assert {v.site for v in reference[1]} == {train.target_site}
        calls.append((p, {v.site for v in scans}, len(heads)))
        return scanner.ScannerEffects(b1_scale=0.8 + 0.05 * len(calls), noise_fraction=0.02), 0.0

    monkeypatch.setattr(simulated, "fit_site_effects", fake_fit)
    got = calibration_heads(cfg, train, 2)
    sites = [s for s in train.sites if s != train.target_site]
    # one fit per site (one protocol each in the debug data), on its own scans, on two heads
    assert all(len(s) == 1 and n == 2 for _, s, n in calls)
    assert sorted(next(iter(s)) for _, s, _ in calls) == sorted(sites)
    # the scans are calibration_volumes' with exactly those effects
    heads = simulated.anatomies(2, cfg.seed, 2, cfg.data.deform_mm, cfg.data.tissue_jitter,
                                cfg.data.t1_texture, float(cfg.data.atrophy),
                                str(cfg.data.partial_volume),
                                first=simulated.CALIBRATION_HEADS_FIRST)
    names = [next(iter(s)) for _, s, _ in calls]
    fx = [scanner.ScannerEffects(b1_scale=0.8 + 0.05 * (k + 1), noise_fraction=0.02)
          for k in range(len(calls))]
    scans = [train.volumes[s][site] for s in train.subjects for site in sites
             if site in train.volumes[s]]
    want = simulated.calibration_volumes(
        [p for p, _, _ in calls], names, train.target_protocol(), train.target_site, heads,
        synthetic.load_anatomy(2)[2], cfg.seed,
        simulated.slice_profiles([p for p, _, _ in calls], scans, 2), effects=fx)
    for subject in want:
        for site in want[subject]:
            np.testing.assert_array_equal(got.volumes[subject][site].image,
                                          want[subject][site].image)
    # a model trained without target-site images reads none here either: "auto" then draws
    # the effects (no fit), "fitted" fits without the reference
    calls.clear()
    with cfg.unlocked():
        cfg.model.calibrate_effects = "auto"
    calibration_heads(cfg, train, 1, target_scans=False)
    assert calls == []
    monkeypatch.setattr(simulated, "fit_site_effects", lambda p, scans, heads, profile=None,
                        seed=0, grid=None, reference=None: (
                            calls.append(reference) or scanner.ScannerEffects(), 0.0))
    with cfg.unlocked():
        cfg.model.calibrate_effects = "fitted"
    calibration_heads(cfg, train, 1, target_scans=False)
    assert calls and all(r is None for r in calls)
    with cfg.unlocked():
        cfg.model.calibrate_effects = "guessed"
    with pytest.raises(InputError, match=r"config\.model\.calibrate_effects='guessed'"):
        calibration_heads(cfg, train, 1)


def _fake_physics_maps(monkeypatch, fake_volumes, fake_maps, knots: int, **cfg):
    """A stand-in PhyCHarm for :func:`phyjax.methods.phycharm.physics_site_maps` whose heads,
    their scans and the maps fitted on them are the fakes given (none of the physics runs)."""
    from types import SimpleNamespace

    from phyjax.methods import phycharm

    monkeypatch.setattr(simulated, "calibration_volumes", fake_volumes)
    monkeypatch.setattr(phycharm, "fit_site_maps", fake_maps)
    monkeypatch.setattr(phycharm, "physics_heads", lambda s, n, voxel, first: [None] * n)
    settings = {"seed": 3, "deform_mm": 4.0, "tissue_jitter": 0.05, "t1_texture": 0.03,
                "atrophy": 0.0, "partial_volume": "signal", "n": 4, "knots": knots,
                "slice_step": 2}
    return SimpleNamespace(cfg={"calibrate": "sites", "site_maps": [], "physics_heads": settings,
                                **cfg},
                           target_protocol=TARGET, target_site="ref", grid_mm=(2.0, 2.0, 2.0),
                           maps_apply=lambda t: True)


def test_a_harmonize_time_map_keeps_training_s_slice_spacing_and_head_resolution(monkeypatch):
    # physics_site_maps on 1 mm scans of a model trained at 2 mm: the heads are made at 1 mm
    # (the template nearest the scans), with the scans' slice thickness, and the map pools
    # every 2 x slice_step-th slice (training's spacing in mm); at the training grid itself
    # the step is training's.  The saved settings make the heads.
    from phyjax.methods import phycharm

    seen = {}

    def fake_volumes(sources, names, target, target_site, heads, affine, seed, profiles,
                     progress=False, effects=None):
        seen.update(voxel=float(abs(affine[0, 0])), n=len(heads), seed=seed,
                    profile=profiles[0], effects=effects)
        return {}

    def fake_maps(harmonizer, heads, knots, progress, step, *filters):
        seen.update(knots=knots, step=step)
        return [{"protocol": {}, "sites": [], "subjects": 0, "output": [0, 1], "target": [0, 1]}]
    harm = _fake_physics_maps(monkeypatch, fake_volumes, fake_maps, 64)
    for mm, want_voxel, want_step in ((1.0, 1.0, 4), (2.0, 2.0, 2)):
        mask = np.zeros((8, 8, 8), bool)
        mask[2:6, 2:6, 2:6] = True
        scan = Volume("u", "new", SPGR, mask.astype(np.float32), mask, "u.nii.gz",
                      affine=np.diag([mm, mm, mm, 1.0]), slice_thickness_mm=3 * mm)
        harm.cfg["site_maps"] = []
        (made,) = phycharm.physics_site_maps(harm, [scan])
        assert (seen["voxel"], seen["step"], seen["n"], seen["knots"], seen["seed"]) == (
            want_voxel, want_step, 4, 64, 3)
        assert seen["profile"] == (pytest.approx(3.0), 2) and seen["effects"] == [None]
        assert made["made"]["voxel_mm"] == want_voxel and made["made"]["slice_step"] == want_step


def test_a_harmonize_time_map_is_kept_and_read_back_only_for_what_it_was_made_with(
        monkeypatch, tmp_path):
    # config.harmonize.new_protocol_cache (phyjax.methods.map_cache): the map made for a new
    # protocol is kept in a folder, and the next call with the same network, settings and
    # scans reads it back -- the knots the physics made (the oracle: the first call's), without
    # making them again -- while another network, inference setting or slice thickness, a
    # corrupt or tampered file, makes it again; a folder that cannot be written to warns.
    import os
    import warnings

    from phyjax.methods import map_cache, phycharm

    calls = []

    def fake_volumes(sources, names, target, target_site, heads, affine, seed, profiles,
                     progress=False, effects=None):
        return {}

    def fake_maps(harmonizer, heads, knots, progress, step, *filters):
        calls.append(step)
        lo = float(len(calls))          # each making gives other knots
        return [{"protocol": {}, "sites": [], "subjects": 4, "output": [0.0, lo, 2 * lo],
                 "target": [0.0, 1.0, 3.0]}]
    harm = _fake_physics_maps(monkeypatch, fake_volumes, fake_maps, 3, tta="flip")
    harm.params = {"w": np.arange(6, dtype=np.float32)}
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True

    def scan(thickness):
        return Volume("u", "new", SPGR, mask.astype(np.float32), mask, "u.nii.gz",
                      affine=np.diag([2.0, 2.0, 2.0, 1.0]), slice_thickness_mm=thickness)

    def make(thickness=6.0, cache=str(tmp_path / "kept")):
        harm.cfg["site_maps"] = []
        (entry,) = phycharm.physics_site_maps(harm, [scan(thickness)], cache=cache)
        return entry
    first = make()
    assert len(calls) == 1 and first["output"] == [0.0, 1.0, 2.0]
    (path,) = [str(p) for p in (tmp_path / "kept").iterdir()]
    assert first["made"]["kept"] == path
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask     # readable as the user's files
    again = make()
    assert len(calls) == 1                              # read back, not made
    assert (again["output"], again["target"]) == (first["output"], first["target"])
    assert again["made"] == first["made"]
    assert make(cache=None)["made"]["kept"] is None and len(calls) == 2   # off: made
    # what the map depends on: each change makes another one, in another file
    make(thickness=8.0)
    assert len(calls) == 3
    harm.cfg["tta"] = "none"
    make()
    assert len(calls) == 4
    harm.params = {"w": np.arange(6, dtype=np.float32) + 1}
    make()
    assert len(calls) == 5 and len(os.listdir(tmp_path / "kept")) == 4
    # a tampered file: another key, or knots that are not a map -- made again, with a warning
    harm.cfg["tta"], harm.params = "flip", {"w": np.arange(6, dtype=np.float32)}
    kept = json.load(open(path))
    for bad in (dict(kept, key=dict(kept["key"], network="0" * 64)),
                dict(kept, map={"output": [0.0, float("nan")], "target": [0.0, 1.0]}),
                "{not json"):
        with open(path, "w") as f:
            f.write(bad if isinstance(bad, str) else json.dumps(bad))
        n = len(calls)
        with pytest.warns(UserWarning, match="made again"):
            make()
        assert len(calls) == n + 1 and len(json.load(open(path))["map"]["output"]) == 3
    # a folder that cannot be written to: the map is made, and the warning says so
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.warns(UserWarning, match="cannot be kept there"):
        entry = make(cache=str(blocked / "sub"))
    assert entry["made"]["kept"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert map_cache.load(str(tmp_path / "nowhere"), {"a": 1})[0] is None


def test_fit_site_effects_equals_the_plain_computation_to_the_bit(heads, monkeypatch):
    # The fit draws its noise once per head and scales it per grid point in numpy, two B1+
    # settings at a time on threads (phyjax.parallel).  Oracle: every grid point imaged the
    # plain way, scanner.rician_noise per point, one after another; the fit must return the
    # same point and the same distance to the bit, with one worker or two.
    p = dataclasses.replace(Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0, 3.0),
                            tr_readout=0.0071, n_readouts=176.0)
    scans = [Volume("s", "x", p, normalize(synthetic.acquire(
        h.maps(3.0), h.mask, p, scanner.ScannerEffects(b1_scale=1.1, noise_fraction=0.03),
        jax.random.key(7 + a)), h.mask), h.mask, "x") for a, h in enumerate(heads)]
    grid = {"b1_scale": (0.9, 1.1), "b1_curvature": (0.0, 0.2), "bias_amplitude": (0.0, 0.3),
            "noise_fraction": (0.01, 0.03, 0.05)}
    points = [(s, c, b, n) for s in grid["b1_scale"] for c in grid["b1_curvature"]
              for b in grid["bias_amplitude"] for n in grid["noise_fraction"]]
    q = simulated.EFFECT_QUANTILES
    real = np.quantile(np.concatenate([v.image[v.mask] for v in scans]), q)
    key = jax.random.key(simulated.ANATOMY_SEED + 700_000 + 3)
    sim = np.zeros((len(points), q.size))
    for a, h in enumerate(heads):
        k_bias, k_noise = jax.random.split(jax.random.fold_in(key, a))
        for i, (s, c, b, n) in enumerate(points):
            clean = np.asarray(jnp.abs(scanner.slice_profile(synthetic.signed_image(
                h.maps(3.0), p, scanner.b1_field(h.mask.shape, s, c)), 0.0)))[h.mask]
            field = np.asarray(scanner.bias_field(
                h.mask.shape, scanner.sample_bias_coefficients(k_bias, b)))[h.mask]
            image = clean * field
            image = np.asarray(scanner.rician_noise(image, n * np.percentile(image, 99.0),
                                                    k_noise), np.float32)
            sim[i] += np.quantile(image / np.percentile(image, 99.0), q) / len(heads)
    distance = np.abs(sim - real[None]).mean(1)
    best = min(range(len(points)), key=lambda i: (distance[i], abs(points[i][0] - 1.0),
                                                  points[i][1]))
    for workers in ("1", "2"):
        monkeypatch.setenv("PHYJAX_THREADS", workers)
        got, d = simulated.fit_site_effects(p, scans, heads, seed=3, grid=grid)
        assert (got.b1_scale, got.b1_curvature, got.bias_amplitude,
                got.noise_fraction) == points[best]
        assert d == distance[best]


@pytest.mark.parametrize("settings, paired, physics", [
    (_settings(), True, True), (_settings(), False, True), (_settings(), True, False),
    (_settings(calibrate_heads=2), True, True), (_settings(calibrate_heads=2), True, False),
    (_settings(calibrate_with="physics", calibrate_simulated=4), True, True),
    (_settings(calibrate_with="traveling"), False, True),
    (_settings(calibrate="none"), True, True)])
def test_the_maps_plan_is_what_training_does(world, settings, paired, physics):
    # plan_site_maps is how a tool (benchmarks/refine_sweep.py) learns a run's maps again: its
    # network subjects, maps' heads and physics count must be the ones fit_calibrated used
    train, _, heads, Memorizing = world
    trained_on, asked = [], []

    def fit_network(subset):
        trained_on.append(subset.subjects)
        return Memorizing(subset.subjects)

    def physics_heads(t, n):
        asked.append(n)
        return heads

    plan = plan_site_maps(train, settings, 3, "model", paired, physics)
    harm = fit_calibrated(fit_network, train, settings, 3, "model", paired, progress=False,
                          physics_heads=physics_heads if physics else None)
    assert trained_on == [plan.network_set.subjects]
    if plan.source == "physics":
        assert asked == [plan.n_physics] and plan.maps_set is None
        assert harm.cfg["calibration_subjects"] == list(heads.subjects)
    elif plan.source == "traveling":
        assert asked == [] and harm.cfg["calibration_subjects"] == list(plan.maps_set.subjects)
        held = settings.get("calibrate_heads", 0)
        assert len(plan.maps_set.subjects) == (held or len(train.subjects))
        assert set(plan.maps_set.subjects).isdisjoint(plan.network_set.subjects) == bool(held)
    else:
        assert asked == [] and harm.cfg["calibration_subjects"] == []
