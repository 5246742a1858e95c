"""Supervised U-Net (no physics) as a method: source slices -> target slices, PhyCHarm's budget.

:class:`phyjax.models.ConditionalUNet` on the same 2.5-D slice pairs, sites, batches, steps,
optimizer and image losses as PhyCHarm (``w_harm * L1 + w_ssim * (1 - SSIM)``), predicting a
residual on the centre slice when ``config.unet.residual``; ``config.unet.w_hist`` (0 by
default: the plain supervised baseline) adds PhyCHarm's intensity-distribution term, to tell
what that term buys apart from the physics.  ``config.unet.condition``:
``"none"`` gives it no acquisition information, ``"protocol"`` feeds the encoded source
protocol through FiLM.  ``config.unet.calibrate`` (the benchmark shares PhyCHarm's
``config.model.calibrate``): the same output calibration, e.g. ``"sites"``, per-protocol maps
learned on its training pairs (:mod:`phyjax.methods.calibration`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.data.slices import check_views
from phyjax.data.split import TrainingSet, require_training_set
from phyjax.losses import intensity_distribution, masked_l1, ssim_loss
from phyjax.methods import networks
from phyjax.methods.base import fitted_fields, register
from phyjax.methods.calibration import (check_calibrate, check_calibrate_map, check_min_gain,
                                       fit_calibrated, parse_denoise)
from phyjax.models.unet import ConditionalUNet
from phyjax.physics.sequences import encode
from phyjax.train import TrainState, fit as fit_loop, make_train_step

CONDITIONS = ("none", "protocol")


def make_model(unet_cfg: dict) -> ConditionalUNet:
    return ConditionalUNet(features=tuple(unet_cfg["features"]), out_channels=1,
                           cond_features=unet_cfg["cond_features"])


def make_apply(model: ConditionalUNet, unet_cfg: dict):
    """``(params, source, mask, code) -> harmonized (B, H, W, 1)``."""
    context = unet_cfg["context"]

    def apply(params, source, mask, code):
        out = model.apply({"params": params}, source, code)
        if unet_cfg["residual"]:
            out = out + source[..., context:context + 1]
        return out * mask

    return apply


class UNetHarmonizer(networks.SliceNetworkHarmonizer):
    """Trained supervised U-Net (settings: :func:`unet_config`)."""

    config_key = "unet"

    def build(self):
        apply = make_apply(make_model(self.cfg), self.cfg)
        protocol_coded = self.cfg["condition"] == "protocol"

        @jax.jit
        def predict(params, source, mask, code, _field_strength):
            code = code if protocol_coded else jnp.zeros((source.shape[0], 1))
            return {"harmonized": apply(params, source, mask, code)}

        return predict

    def predict(self, volume, z_slices=None) -> dict[str, np.ndarray]:
        """The network's output on ``volume``, through its calibration (``cfg["calibrate"]``,
        :func:`phyjax.methods.calibration.calibrate_output`; none for a model saved before
        the setting existed); ``z_slices``: only those slices along the third axis
        (:func:`phyjax.methods.networks.predict_volume`)."""
        return self.calibrate(super().predict(volume, z_slices), volume, z_slices)


def unet_config(config) -> dict:
    """The U-Net's settings: ``config.unet`` plus the 2.5-D context of ``config.model``."""
    u = config.unet
    parse_denoise(u.get("calibrate_denoise", ""), "config.unet.calibrate_denoise")  # early
    check_min_gain(u.get("calibrate_denoise_min_gain", 0.0),
                   "config.unet.calibrate_denoise_min_gain")
    check_calibrate_map(u.get("calibrate_map", "quantile"), "config.unet.calibrate_map")
    if u.condition not in CONDITIONS:
        raise ValueError(f"unet.condition must be one of {CONDITIONS}, got {u.condition!r}.")
    return {"features": tuple(u.features), "cond_features": u.cond_features,
            "condition": u.condition, "residual": bool(u.residual),
            "context": config.model.context,
            "tta": networks.check_tta(u.get("tta", "none"), "config.unet.tta"),
            "calibrate": check_calibrate(u.get("calibrate", "none"), "config.unet.calibrate"),

            "views": check_views(u.get("views", ("axial",)), "config.unet.views")}


@register("unet", harmonizer=UNetHarmonizer)
def fit(config, train: TrainingSet, name: str = "unet", *, workdir: str, progress: bool = True,
        **_) -> UNetHarmonizer:
    """Train the U-Net on ``train`` with ``config.train`` (checkpoints in ``workdir``);
    ``config.unet.ensemble`` > 1: that many, averaged (:func:`networks.fit_ensemble`);
    ``config.unet.calibrate="sites"``: then its per-protocol output maps learned on the same
    training pairs, as PhyCHarm's (:func:`phyjax.methods.calibration.learn_site_maps`), or on
    ``config.unet.calibrate_heads`` subjects kept out of the network's training
    (:func:`phyjax.methods.calibration.fit_calibrated`)."""
    return fit_calibrated(
        lambda subset: (networks.fit_ensemble(_fit_network, config, "unet", subset, name=name,
                                              workdir=workdir, progress=progress)
                        or _fit_network(config, subset, name, workdir=workdir,
                                        progress=progress)),
        train, config.unet, config.seed, "unet", True, progress, name)


def _fit_network(config, train: TrainingSet, name: str = "unet", *, workdir: str,
                 progress: bool = True, **_) -> UNetHarmonizer:
    """One U-Net (or ensemble member), its calibration maps not yet learned."""
    train = require_training_set(train)
    cfg, t = unet_config(config), config.train
    w_hist = float(config.unet.get("w_hist", 0.0))
    data = networks.SlicePairs(train, len(cfg["features"]), config.data.min_mask_fraction,
                               cfg["context"], method="The supervised U-Net", directory=workdir,
                               views=cfg["views"])

    def code_of(protocol):
        return (np.asarray(encode(protocol), np.float32) if cfg["condition"] == "protocol"
                else np.zeros(1, np.float32))

    # each scan's own protocol (a site's subjects may have been scanned with different ones)
    codes = {(k, site): code_of(train.volumes[subject][site].protocol)
             for k, subject in enumerate(data.subjects) for site in data.sites}
    model, tx = make_model(cfg), networks.make_optimizer(t)
    x0 = jnp.zeros((1,) + data.padded + (2 * cfg["context"] + 1,))
    params = model.init(jax.random.key(config.seed), x0,
                        jnp.zeros((1,) + codes[(0, data.sites[0])].shape))["params"]
    apply = make_apply(model, cfg)

    def loss_fn(params, batch):
        out = apply(params, batch["source"], batch["mask"], batch["code"])
        l1 = masked_l1(out, batch["target"], batch["mask"])
        l_ssim = ssim_loss(out, batch["target"], batch["mask"])
        loss = t.w_harm * l1 + t.w_ssim * l_ssim
        metrics = {"l1": l1, "ssim": 1.0 - l_ssim}
        if w_hist:
            metrics["hist"] = intensity_distribution(out, batch["target"], batch["mask"])
            loss = loss + w_hist * metrics["hist"]
        return loss, {"loss": loss, **metrics}

    def batch_fn(i):
        site, idx = data.sample(i, t.batch_size, config.seed)
        view = data.view_of(i)
        batch = {k: v for k, v in data.batch(site, idx, view).items()
                 if k in ("source", "target", "mask")}
        batch["code"] = np.stack([codes[(k, site)] for k in data.rows[(site, view)][idx][:, 0]])
        return (batch,)

    batch_fn = networks.mirrored(batch_fn, config.seed, t.get("mirror", 0.0), data.view_of)
    state = fit_loop(TrainState.create(params, tx), make_train_step(loss_fn, tx), batch_fn,
                     t.steps, workdir, checkpoint_every=t.checkpoint_every,
                     log_every=t.log_every, progress=progress, desc="U-Net")
    return UNetHarmonizer(networks.trained_params(state), cfg, config.eval.batch_size,
                          **fitted_fields(train, name))
