"""config.train.simulated_every: physics-made pairs on shipped anatomies mixed into
traveling-subject training (phyjax.methods.phycharm, docs/phycharm_ablation.md item 62)."""

import numpy as np
import pytest

from phyjax.data.nifti import InputError
from phyjax.methods import phycharm
from phyjax.methods.phycharm import check_simulated_every, paired_batch_kind


def test_zero_leaves_every_step_a_paired_batch_in_order():
    assert [paired_batch_kind(i, 0) for i in range(50)] == [("paired", i) for i in range(50)]


@pytest.mark.parametrize("every", [1, 2, 3, 4, 7])
def test_every_nth_step_is_simulated_and_both_streams_stay_consecutive(every):
    kinds = [paired_batch_kind(i, every) for i in range(200)]
    sim = [k for kind, k in kinds if kind == "simulated"]
    paired = [k for kind, k in kinds if kind == "paired"]
    assert [i for i, (kind, _) in enumerate(kinds) if kind == "simulated"] == \
        list(range(every - 1, 200, every))
    # each stream is numbered 0, 1, 2, ... with no index skipped or repeated, so the
    # traveling-subject batches are those of a run without the setting, in the same order
    assert sim == list(range(len(sim))) and paired == list(range(len(paired)))
    assert len(sim) == 200 // every


@pytest.mark.parametrize("bad", [-1, 1.5, "four", None, float("nan"), float("inf")])
def test_a_bad_value_names_the_key(bad):
    with pytest.raises(InputError, match=r"config\.train\.simulated_every"):
        check_simulated_every(bad)


def test_whole_numbers_pass():
    assert check_simulated_every(0) == 0 and check_simulated_every(4.0) == 4


def _batches(monkeypatch, tmp_path, every, name="phycharm"):
    """The training batches PhyCHarm's fit on the debug data asks for, without training."""
    import conftest
    from phyjax import methods
    from phyjax.data.dataset import load_dataset

    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path / "cache")
        cfg.train.simulated_every = every
        cfg.model.calibrate = "none"
    data = load_dataset(cfg.data, progress=False)
    train = data.training_set(data.split(cfg.data.n_test, cfg.data.seed))
    seen = []

    def no_training(state, step, batch_fn, steps, workdir, **_):
        seen.extend(batch_fn(i) for i in range(steps))
        return state

    monkeypatch.setattr(phycharm, "fit_loop", no_training)
    methods.fit(name, cfg, train, workdir=str(tmp_path / f"run{every}"), progress=False,
                has_maps=data.has_maps)
    return seen, train


def test_physics_made_batches_take_every_nth_step_and_leave_the_pairs_in_order(
        monkeypatch, tmp_path):
    plain, _ = _batches(monkeypatch, tmp_path, 0)
    mixed, _ = _batches(monkeypatch, tmp_path, 2)
    assert len(plain) == len(mixed) == 6
    for i, (arrays, source, target, ref, weights) in enumerate(mixed):
        kind, k = paired_batch_kind(i, 2)
        if kind == "paired":    # the traveling-subject batch k of a run without the setting
            expected = plain[k][0]
            assert set(arrays) == set(expected)
            for key in arrays:
                np.testing.assert_array_equal(arrays[key], expected[key])
        else:
            # a pair of one simulated head: its own ground-truth T1 under the source, and the
            # map term on (the simulated head has its maps whatever the data has)
            assert weights["w_map"] > 0
            inside = arrays["mask"] > 0
            assert inside.any() and (arrays["t1"][inside] > 0.1).all()
            assert np.isfinite(arrays["source"]).all() and np.isfinite(arrays["target"]).all()
            assert arrays["target"][inside].std() > 0.01       # an image, not a constant


def test_physics_made_pairs_alone_refuse_the_setting(monkeypatch, tmp_path):
    with pytest.raises(InputError, match=r"config\.train\.simulated_every.*pairs='simulated'"):
        _batches(monkeypatch, tmp_path, 2, name="phycharm_unpaired")
