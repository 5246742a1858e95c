"""config.model.calibrate_heads: site maps learned on traveling subjects the network never
trained on (phyjax.methods.calibration.calibration_holdout, docs/phycharm_ablation.md item 61)."""

import numpy as np
import pytest

from phyjax.data.nifti import InputError
from phyjax.data.split import Split
from phyjax.data.volumes import Volume
from phyjax.methods.calibration import calibrate_output, calibration_holdout, fit_site_maps
from phyjax.physics.sequences import Protocol

MASK = np.zeros((10, 10, 8), bool)
MASK[1:9, 1:9, 1:7] = True
PREF = Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0, 3.0)
PA = Protocol.from_degrees("mprage", 2.0, 0.003, 0.9, 8.0, 1.5)
PB = Protocol.from_degrees("spgr", 0.02, 0.004, 0.0, 20.0, 3.0)


def head(subject, wm_fraction, rng, sites=("ref", "a", "b")):
    p = [0.2, 0.8 - wm_fraction, wm_fraction]
    levels = rng.choice([0.3, 0.7, 1.0], MASK.shape, p=p)
    target = np.where(MASK, levels + rng.normal(0, 0.03, MASK.shape), 0).astype(np.float32)
    protocols = {"ref": PREF, "a": PA, "b": PB}
    return {site: Volume(subject, site, protocols[site], target, MASK,
                         f"{subject}_{site}.nii.gz") for site in sites}


def training_set(n=8, seed=0):
    rng = np.random.default_rng(seed)
    volumes = {f"{k:02d}": head(f"{k:02d}", 0.3 + 0.02 * k, rng) for k in range(n)}
    volumes["99"] = head("99", 0.15, rng)
    train = Split(tuple(f"{k:02d}" for k in range(n)), ("99",)).training_set(volumes, "ref")
    return train, volumes


def test_zero_keeps_the_training_set_and_n_partitions_it_by_seed():
    train, _ = training_set()
    assert calibration_holdout(train, 0, 0) == (train, train)
    draws = set()
    for seed in range(6):
        rest, held = calibration_holdout(train, 2, seed)
        assert len(held.subjects) == 2 and len(rest.subjects) == 6
        assert set(held.subjects).isdisjoint(rest.subjects)
        assert set(held.subjects) | set(rest.subjects) == set(train.subjects)
        assert held.target_site == rest.target_site == "ref"
        assert set(held.volumes) == set(held.subjects)      # no scan of the other half
        again = calibration_holdout(train, 2, seed)[1].subjects
        assert again == held.subjects                       # reproducible for the seed
        draws.add(held.subjects)
    assert len(draws) > 1                                   # and the seed decides


@pytest.mark.parametrize("bad", [-1, 1.5, "two", None, 8, 9])
def test_bad_counts_name_the_key(bad):
    train, _ = training_set()
    with pytest.raises(InputError, match=r"config\.model\.calibrate_heads"):
        calibration_holdout(train, bad, 0)
    with pytest.raises(InputError, match=r"config\.unet\.calibrate_heads"):
        calibration_holdout(train, bad, 0, "config.unet.calibrate_heads")


def test_a_site_the_held_out_heads_lack_is_named():
    # Site "b" scanned only in subject 00: unless 00 is held out, no map could be learned for
    # the protocol the network is trained on there.
    rng = np.random.default_rng(1)
    volumes = {f"{k:02d}": head(f"{k:02d}", 0.3, rng, ("ref", "a", "b") if k == 0
                                else ("ref", "a")) for k in range(4)}
    volumes["99"] = head("99", 0.3, rng)
    train = Split(("00", "01", "02", "03"), ("99",)).training_set(volumes, "ref")
    outcomes = set()
    for seed in range(8):
        try:
            rest, held = calibration_holdout(train, 1, seed)
            assert held.subjects == ("00",) and "00" not in rest.subjects
            outcomes.add("ok")
        except InputError as e:
            assert "site(s) ['b']" in str(e) and "config.model.calibrate_heads=1" in str(e)
            outcomes.add("error")
    assert outcomes == {"ok", "error"}


def test_held_out_maps_correct_what_a_memorizing_network_does_on_new_heads():
    # The mechanism item 61 is about. A stand-in network that has memorized its training
    # heads returns their target scans exactly at every site, and on any other head the
    # target through an increasing distortion g at site "a". Maps learned on its own
    # training heads are the identity and leave g on a new head; maps learned on heads it
    # never trained on (calibrate_heads=2) are g's inverse and give the new head's target back.
    train, volumes = training_set()
    g = lambda x: 0.2 + 0.5 * x ** 2     # noqa: E731  increasing on x > 0

    class Memorizing:
        def __init__(self, seen):
            self.seen, self.cfg = set(seen), {"calibrate": "sites"}

        def harmonize(self, v, z_slices=None):
            t = volumes[v.subject]["ref"].image
            new = v.subject not in self.seen and v.site == "a"
            return np.where(MASK, g(t) if new else t, 0).astype(np.float32)

    target = volumes["99"]["ref"].image
    new_head = {"harmonized": Memorizing(train.subjects).harmonize(volumes["99"]["a"])}

    def error(maps):
        got = calibrate_output(new_head, MASK, "sites", site_maps=maps, protocol=PA)
        return np.abs(got["harmonized"] - target)[MASK].mean()

    own = fit_site_maps(Memorizing(train.subjects), train, progress=False)
    rest, held = calibration_holdout(train, 2, 0)
    held_maps = fit_site_maps(Memorizing(rest.subjects), held, progress=False)
    assert error(own) > 0.1                  # the training heads' maps leave g in place
    assert error(held_maps) < 0.01           # the held-out heads' maps undo it
    assert all(m["subjects"] == 2 for m in held_maps)


def test_a_trained_phycharm_records_its_calibration_heads(tmp_path):
    # PhyCHarm fitted on the debug config's data (2 training subjects) with calibrate_heads=1:
    # the network trains on one subject, the maps are learned on the other; the harmonizer
    # counts both as fitted on (so neither may be a test subject), names the calibration head
    # in what it saves, and its maps were learned on one head.
    import conftest
    from phyjax import methods
    from phyjax.data.dataset import load_dataset

    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path / "cache")
        cfg.model.calibrate_heads = 1
        cfg.model.calibrate_with = "traveling"
    data = load_dataset(cfg.data, progress=False)
    train = data.training_set(data.split(cfg.data.n_test, cfg.data.seed))
    assert len(train.subjects) == 2
    harm = methods.fit("phycharm", cfg, train, workdir=str(tmp_path / "run"), progress=False,
                       has_maps=data.has_maps)
    assert harm.fitted_on == set(train.subjects)
    held = harm.cfg["calibration_subjects"]
    assert len(held) == 1 and held[0] in train.subjects
    assert {m["subjects"] for m in harm.cfg["site_maps"]} == {1}
    methods.save(harm, str(tmp_path / "saved"))
    again = methods.load(str(tmp_path / "saved"))
    assert again.cfg["calibration_subjects"] == held and again.fitted_on == harm.fitted_on
