"""PhyCHarm's paired batches carry the source protocol of the scans they hold."""

import types

import numpy as np

from phyjax.methods.phycharm import paired_sampler
from phyjax.physics.sequences import Protocol


def _data(protocol_of):
    """A SlicePairs-like stand-in: 4 subjects x 10 slices at sites 'src' and 'ref'."""
    subjects, sites = ["01", "02", "03", "04"], ["ref", "src"]
    rows = np.array([(k, z) for k in range(4) for z in range(10)])

    def sample(i, batch_size, seed):
        site = sites[i % 2]
        return site, np.random.default_rng([seed, i]).choice(len(rows), size=batch_size)

    data = types.SimpleNamespace(subjects=subjects, sites=sites, sample=sample,
                                 rows={(s, "axial"): rows for s in sites},
                                 view_of=lambda i: "axial")
    volumes = {s: {site: types.SimpleNamespace(protocol=protocol_of(s, site)) for site in sites}
               for s in subjects}
    return data, types.SimpleNamespace(volumes=volumes)


def test_a_site_whose_protocol_changed_gets_each_scans_own_protocol():
    ref = Protocol.from_degrees("mprage", tr=2.3, te=0.003, ti=0.9, flip_angle_deg=9.0)
    old = Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=25.0)
    new = Protocol.from_degrees("spgr", tr=0.025, te=0.004, flip_angle_deg=20.0)

    def protocol_of(subject, site):       # src changed protocol after subject 02
        return ref if site == "ref" else (old if subject in ("01", "02") else new)

    data, train = _data(protocol_of)
    sample = paired_sampler(data, train, batch_size=6, seed=0)
    seen = set()
    for i in range(40):
        site, idx, g = sample(i)
        subjects = {data.subjects[k] for k in data.rows[(site, "axial")][idx][:, 0]}
        for s in subjects:        # every row of the batch was scanned with the batch's protocol
            assert sample.protocols[g] == protocol_of(s, site)
        seen.add((site, sample.protocols[g].tr))
    assert seen == {("ref", 2.3), ("src", 0.02), ("src", 0.025)}


def test_one_protocol_per_site_draws_exactly_as_before():
    ref = Protocol.from_degrees("mprage", tr=2.3, te=0.003, ti=0.9, flip_angle_deg=9.0)
    src = Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=25.0)
    data, train = _data(lambda s, site: ref if site == "ref" else src)
    sample = paired_sampler(data, train, batch_size=6, seed=3)
    assert len(sample.protocols) == 2
    for i in range(10):
        site, idx, g = sample(i)
        want_site, want_idx = data.sample(i, 6, 3)
        assert site == want_site and np.array_equal(idx, want_idx)
        assert sample.protocols[g] == (ref if site == "ref" else src)


def test_every_plane_gets_simulated_batches_whatever_adapt_every():
    """Simulated-pairs training with several planes: the planes cycle over the simulated
    batches, so each gets its share (before, indexed by the step, 3 planes at adapt_every=3
    gave the sagittal plane no simulated batch, 2 planes at 2 none to the coronal)."""
    from collections import Counter

    from phyjax.data.slices import view_cycle
    from phyjax.methods.phycharm import batch_kind

    for views, adapt_every in ((("axial", "coronal", "sagittal"), 3), (("axial", "coronal"), 2),
                               (("axial", "coronal"), 4)):
        kinds = [batch_kind(i, adapt_every, True) for i in range(1200)]
        sim = Counter(view_cycle(k, 1, views) for kind, k in kinds if kind == "simulated")
        assert set(sim) == set(views) and max(sim.values()) - min(sim.values()) <= 1
        real = [k for kind, k in kinds if kind == "real"]
        assert real == list(range(1200 // adapt_every))     # the k-th real batch, in order
    assert [batch_kind(i, 4, False) for i in range(5)] == [("simulated", i) for i in range(5)]


def test_physics_off_sites_zero_only_that_sites_physics_weight():
    import pytest
    from ml_collections import ConfigDict

    from phyjax.data.nifti import InputError
    from phyjax.methods.phycharm import WEIGHTS, weights_by_site

    weights = {k: np.float32(0.5 + i) for i, k in enumerate(WEIGHTS)}
    sites = ("geIRSPGR3T", "reference", "se1p5T2D")
    cfg = ConfigDict({"physics_off_sites": ("se1p5T2D",)})
    got = weights_by_site(weights, cfg, sites)
    assert set(got) == set(sites)
    assert got["se1p5T2D"]["w_physics"] == 0.0
    assert {k: v for k, v in got["se1p5T2D"].items() if k != "w_physics"} == {
        k: v for k, v in weights.items() if k != "w_physics"}
    assert got["geIRSPGR3T"] == weights and got["reference"] == weights
    assert weights["w_physics"] != 0.0                   # the caller's dict is not changed
    assert weights_by_site(weights, ConfigDict({}), sites)["se1p5T2D"] == weights
    with pytest.raises(InputError, match=r"\['se1p5T2d'\] are not training sites"):
        weights_by_site(weights, ConfigDict({"physics_off_sites": ("se1p5T2d",)}), sites)


def test_physics_off_sites_is_refused_before_training_where_it_cannot_apply(tmp_path):
    import pytest

    import conftest
    from phyjax import methods
    from phyjax.data.nifti import InputError
    from phyjax.data.split import Split

    volumes = conftest.tiny_volumes(tmp_path, shape=(8, 8, 5))
    train = Split(train=("01", "02", "03"), test=("04",)).training_set(volumes, "ref")
    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.train.physics_off_sites = ("se1p5T2D",)          # not a site of this data
    with pytest.raises(InputError, match=r"\['se1p5T2D'\] are not training sites"):
        methods.fit("phycharm", cfg, train, workdir=str(tmp_path / "a"), progress=False)
    with cfg.unlocked():
        cfg.train.physics_off_sites = ("x",)
        cfg.train.pairs = "simulated"                         # no site batches to switch off
    with pytest.raises(InputError, match="traveling-subject pairs only"):
        methods.fit("phycharm", cfg, train, workdir=str(tmp_path / "b"), progress=False)
