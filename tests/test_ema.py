"""The parameters' moving average (config.train.ema; phyjax.methods.networks.params_ema)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from phyjax.data.nifti import InputError
from phyjax.methods import networks
from phyjax.train.loop import TrainState, fit, make_train_step


def _train_cfg(ema, steps=12):
    return ConfigDict(dict(learning_rate=0.1, warmup_steps=2, steps=steps, ema=ema))


def test_average_is_the_exponentially_weighted_mean_of_the_iterates():
    # oracle: the iterates recorded one by one and averaged in numpy with weights
    # decay**(n-k) (1 - decay), normalised to sum to 1
    decay, n = 0.8, 7
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.float32(0.5)}
    tx = optax.chain(optax.sgd(0.3), networks.params_ema(decay))
    state = tx.init(params)
    iterates = []
    for _ in range(n):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=np.shape(p)), jnp.float32),
                             params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        iterates.append(jax.tree.map(np.asarray, params))
    weights = np.array([decay ** (n - 1 - k) * (1 - decay) for k in range(n)])
    weights /= weights.sum()
    averaged = networks.averaged_params(state)
    for name in ("w", "b"):
        expected = sum(w * it[name] for w, it in zip(weights, iterates))
        np.testing.assert_allclose(averaged[name], expected, rtol=1e-5, atol=1e-6)
    # the updates pass through unchanged: the last iterate is plain SGD's
    assert not np.allclose(averaged["w"], iterates[-1]["w"])


def test_updates_unchanged_and_params_required():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.arange(3.0)}
    plain, with_ema = optax.adam(0.1), optax.chain(optax.adam(0.1), networks.params_ema(0.9))
    u1, _ = plain.update(grads, plain.init(params), params)
    u2, _ = with_ema.update(grads, with_ema.init(params), params)
    np.testing.assert_array_equal(u1["w"], u2["w"])
    with pytest.raises(ValueError, match="needs the parameters"):
        networks.params_ema(0.9).update(grads, networks.params_ema(0.9).init(params))


def test_no_average_before_a_step_or_without_ema():
    params = {"w": jnp.ones(3)}
    tx = networks.make_optimizer(_train_cfg(0.0))
    state = TrainState.create(params, tx)
    assert networks.averaged_params(state.opt_state) is None
    assert networks.trained_params(state) is state.params
    tx = networks.make_optimizer(_train_cfg(0.99))
    assert networks.averaged_params(tx.init(params)) is None   # weight 0: not stepped


@pytest.mark.parametrize("bad", [1.0, -0.1, "x", None, float("nan")])
def test_bad_decay_is_an_error_naming_the_key(bad):
    with pytest.raises(InputError, match=r"config\.train\.ema"):
        networks.make_optimizer(_train_cfg(bad))


def test_resumed_training_keeps_the_average(tmp_path):
    # the average lives in the optimizer state: a run stopped at step 5 and resumed to 12
    # ends with the uninterrupted run's average (and it differs from the last parameters)
    target = jnp.array([1.0, -2.0, 3.0])

    def loss_fn(params, batch):
        loss = jnp.sum((params["w"] * batch - target) ** 2)
        return loss, {"loss": loss}

    def batch_fn(i):
        return (jnp.float32(1.0 + 0.1 * (i % 3)),)

    def run(workdir, stops):
        tx = networks.make_optimizer(_train_cfg(0.9))
        step = make_train_step(loss_fn, tx)
        state = None
        for stop in stops:   # a fresh process each time: restored from the checkpoint
            state = fit(TrainState.create({"w": jnp.zeros(3)}, tx), step, batch_fn, stop,
                        str(workdir), checkpoint_every=5, progress=False)
        return state

    whole = run(tmp_path / "whole", [12])
    resumed = run(tmp_path / "resumed", [5, 12])
    a, b = networks.trained_params(whole), networks.trained_params(resumed)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)
    assert not np.allclose(a["w"], whole.params["w"])
