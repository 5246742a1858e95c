"""PhyCHarm as a method (Lee, Ye & Oh, NeuroImage 2025): fit, harmonize, save, load.

The network (:class:`phyjax.models.PhyCHarm`) predicts T1 and M0 from a source slice and its
protocol, re-synthesizes the target protocol's image from them and refines it.  Training
(:func:`fit`) minimises, per batch of one source site's slices,

    w_map * L1(R1, M0 vs ground truth, where known) + w_physics * physics consistency
    + w_harm * L1(harmonized, target) + w_ssim * (1 - SSIM(harmonized, target)),

the physics term re-synthesizing the *source* from the predicted maps through the source
protocol's signal equation (scale-free, :func:`phyjax.losses.physics_consistency`).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from phyjax.data.split import TrainingSet, require_training_set
from phyjax.losses import masked_l1, physics_consistency, r1_m0_map_loss, ssim_loss
from phyjax.methods import networks
from phyjax.methods.base import fitted_fields, register
from phyjax.models.phycharm import PhyCHarm, reference_signal
from phyjax.physics import signal
from phyjax.physics.sequences import Protocol, encode
from phyjax.physics.tissues import tissue_parameters
from phyjax.train import TrainState, fit as fit_loop, make_train_step

MODEL_KEYS = ("features", "cond_features", "t1_max", "m0_max", "context")


def make_model(model_cfg) -> PhyCHarm:
    """The flax module of ``model_cfg`` (a config section or a dict with :data:`MODEL_KEYS`)."""
    m = dict(model_cfg)
    return PhyCHarm(features=tuple(m["features"]), cond_features=m["cond_features"],
                    t1_max=m["t1_max"], m0_max=m["m0_max"])


def reference_level(target: Protocol) -> float:
    """Signal of white matter under ``target`` (the unit of re-synthesized target images)."""
    return float(reference_signal(target, tissue_parameters(target.field_strength)["wm"]))


def init_params(model: PhyCHarm, padded, context: int, seed: int):
    """Initial parameters for slices of shape ``padded`` (PRNG key ``seed``)."""
    h, w = padded
    x = jnp.zeros((1, h, w, 2 * context + 1))
    mask = jnp.zeros((1, h, w, 1))
    code = jnp.zeros((1, encode(Protocol(tr=1.0, te=0.0)).shape[-1]))
    tgt = Protocol(tr=2.0, te=0.0, ti=1.0)
    return model.init(jax.random.key(seed), x, mask, code, code, tgt, 1.0, 3.0)["params"]


def make_loss(model: PhyCHarm, weights, target: Protocol, target_ref: float):
    """``loss_fn(params, batch, source_protocol) -> (loss, metrics)`` (see the module docstring)."""

    def loss_fn(params, b, source_protocol):
        code = encode(source_protocol)
        code_src = jnp.broadcast_to(code, (b["source"].shape[0],) + code.shape)
        code_tgt = jnp.broadcast_to(encode(target), code_src.shape)
        out = model.apply({"params": params}, b["source"], b["mask"], code_src, code_tgt,
                          target, target_ref, source_protocol.field_strength)
        l_map = r1_m0_map_loss(out["t1"], out["m0"], b["t1"], b["m0"], b["mask"])
        r_src = signal.synthesize(source_protocol, out["t1"], jnp.inf, jnp.inf, out["m0"])
        centre = b["source"].shape[-1] // 2
        l_phys = physics_consistency(b["source"][..., centre:centre + 1], r_src, b["mask"])
        l_harm = masked_l1(out["harmonized"], b["target"], b["mask"])
        l_ssim = ssim_loss(out["harmonized"], b["target"], b["mask"])
        loss = (weights["w_map"] * l_map + weights["w_physics"] * l_phys
                + weights["w_harm"] * l_harm + weights["w_ssim"] * l_ssim)
        return loss, {"loss": loss, "map": l_map, "physics": l_phys, "l1": l_harm,
                      "ssim": 1.0 - l_ssim}

    return loss_fn


class PhyCHarmHarmonizer(networks.SliceNetworkHarmonizer):
    """Trained PhyCHarm; :meth:`predict` gives ``t1`` (s, source B0), ``m0``, ``resynth`` and
    ``harmonized``."""

    config_key = "model"

    def build(self):
        model = make_model(self.cfg)
        target, ref = self.target_protocol, reference_level(self.target_protocol)

        @jax.jit
        def predict(params, source, mask, code_src, source_field_strength):
            code_tgt = jnp.broadcast_to(encode(target), code_src.shape)
            return model.apply({"params": params}, source, mask, code_src, code_tgt, target,
                               ref, source_field_strength)

        return predict


@register("phycharm", harmonizer=PhyCHarmHarmonizer)
def fit(config, train: TrainingSet, name: str = "phycharm", *, workdir: str,
        progress: bool = True, has_maps: bool = True, **_) -> PhyCHarmHarmonizer:
    """Train PhyCHarm on ``train`` with ``config.model`` / ``config.train`` (checkpoints in ``workdir``).

    ``has_maps``: ground-truth T1/M0 exist (the default dataset); otherwise ``w_map`` is 0.
    """
    train = require_training_set(train)
    model_cfg = {k: config.model[k] for k in MODEL_KEYS}
    model_cfg["features"] = tuple(model_cfg["features"])
    t = config.train
    data = networks.SlicePairs(train, len(model_cfg["features"]), config.data.min_mask_fraction,
                               model_cfg["context"], method="PhyCHarm")
    model, tx = make_model(model_cfg), networks.make_optimizer(t)
    state = TrainState.create(init_params(model, data.padded, model_cfg["context"], config.seed),
                              tx)
    target = train.target_protocol()
    weights = {k: t[k] for k in ("w_map", "w_physics", "w_harm", "w_ssim")}
    weights["w_map"] = weights["w_map"] if has_maps else 0.0
    step = make_train_step(make_loss(model, weights, target, reference_level(target)), tx)

    def batch_fn(i):
        site, idx = data.sample(i, t.batch_size, config.seed)
        return {k: v[idx] for k, v in data.arrays[site].items()}, data.protocols[site]

    state = fit_loop(state, step, batch_fn, t.steps, workdir, checkpoint_every=t.checkpoint_every,
                     log_every=t.log_every, progress=progress, desc="PhyCHarm")
    return PhyCHarmHarmonizer(state.params, model_cfg, config.eval.batch_size,
                              **fitted_fields(train, name))
