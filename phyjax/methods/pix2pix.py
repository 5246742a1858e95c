"""Pix2Pix (Isola et al., CVPR 2017) as a method: paired source slices -> target slices.

The paired image-to-image baseline of the PhyCHarm paper: a U-Net generator
(:class:`~phyjax.models.gan.UNetGenerator`) and a conditional PatchGAN
(:class:`~phyjax.models.gan.PatchDiscriminator` on the source slice concatenated with the real or
generated target slice), trained on the same 2.5-D slice pairs, sites and batches as the
supervised U-Net and PhyCHarm (:class:`phyjax.methods.networks.SlicePairs`) with

    L_G = L_lsgan(D(x, G(x))) + w_l1 |G(x) - y|_mask,   L_D = L_lsgan(D(x, y), D(x, G(x)))

(Isola et al. eq. 4 with the least-squares GAN of the public code's ``lsgan`` mode in place of
the cross-entropy; ``w_l1`` = their lambda = 100).  Settings: ``config.pix2pix``.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from phyjax.data.split import TrainingSet, require_training_set
from phyjax.losses.radiomic import l1, lsgan_discriminator, lsgan_generator
from phyjax.methods import networks
from phyjax.methods.base import Harmonizer, base_fields, fitted_fields, register
from phyjax.methods.cyclegan import gan_optimizer, predict_slices, to_image, to_net
from phyjax.models.gan import PatchDiscriminator, UNetGenerator, init_params
from phyjax.train import TrainState
from phyjax.train import fit as fit_loop


def pix2pix_config(config) -> dict:
    """``config.pix2pix`` as a JSON-able dict.  Raises ValueError for non-positive sizes."""
    p = config.pix2pix
    for k in ("steps", "batch_size", "features", "depth", "intensity_max"):
        if not p[k] > 0:
            raise ValueError(f"pix2pix.{k} must be positive, got {p[k]!r}.")
    return dict(p.to_dict())


def make_nets(cfg: dict):
    # "stride1": this option's name for "phases" while it also rewrote stride-2 convolutions
    # (same values; harmonizers saved then load)
    impl = cfg.get("conv_impl", "phases")
    impl = {"stride1": "phases"}.get(impl, impl)
    return (UNetGenerator(features=cfg["features"], depth=cfg["depth"],
                          residual=bool(cfg.get("residual", False)), conv_impl=impl),
            PatchDiscriminator(features=cfg["disc_features"], n_layers=cfg["disc_layers"],
                               conv_impl=impl))


def make_apply(gen, cfg: dict):
    """``(params, source (B, H, W, 2 context + 1)) -> harmonized (B, H, W, 1)`` (image units)."""
    imax = cfg["intensity_max"]
    return lambda p, x: to_image(gen.apply({"params": p}, to_net(x, imax)), imax)


_FNS: dict = {}


class Pix2PixHarmonizer(Harmonizer):
    """Trained Pix2Pix generator with its settings (``pix2pix`` in ``harmonizer.json``)."""

    def __init__(self, params, cfg: dict, batch_size: int, **base):
        super().__init__(**base)
        self.params, self.cfg, self.batch_size = params, dict(cfg), int(batch_size)
        key = json.dumps(self.cfg, sort_keys=True, default=list)
        if key not in _FNS:        # one compilation per settings (a loaded harmonizer reuses it)
            _FNS[key] = jax.jit(make_apply(make_nets(self.cfg)[0], self.cfg))
        self._fn = _FNS[key]

    def harmonize(self, volume) -> np.ndarray:
        return predict_slices(self._fn, self.params, volume.image, volume.mask,
                              2 ** self.cfg["depth"], self.batch_size, self.cfg["context"])

    def save_state(self, directory: str) -> dict:
        networks.save_params(self.params, directory)
        return {"pix2pix": self.cfg, "batch_size": self.batch_size}

    @classmethod
    def load_state(cls, directory: str, meta: dict) -> Pix2PixHarmonizer:
        s = meta["state"]
        return cls(networks.load_params(directory), s["pix2pix"], s["batch_size"],
                   **base_fields(meta))


def make_pix2pix_step(cfg: dict, gen, disc, tx):
    """Jit-compiled ``(state, batch) -> (state, metrics)``: a generator then a discriminator
    update; ``state.params`` ``{"g", "d"}``; the state is donated."""
    imax = cfg["intensity_max"]

    def generator_loss(pg, pd, batch):
        x, mask = to_net(batch["source"], imax), batch["mask"]
        fake = to_image(gen.apply({"params": pg}, x), imax) * mask
        adv = lsgan_generator(disc.apply({"params": pd},
                                         jnp.concatenate([x, to_net(fake, imax)], -1)))
        rec = l1(fake, batch["target"], mask)
        loss = adv + cfg["w_l1"] * rec
        return loss, ({"loss": loss, "adv": adv, "l1": rec}, jax.lax.stop_gradient(fake))

    def discriminator_loss(pd, batch, fake):
        x = to_net(batch["source"], imax)
        real = to_net(batch["target"] * batch["mask"], imax)
        d = lambda y: disc.apply({"params": pd}, jnp.concatenate([x, y], -1))
        return lsgan_discriminator(d(real), d(to_net(fake, imax)))

    def step(state, batch):
        pg, pd = state.params["g"], state.params["d"]
        grads, (m, fake) = jax.grad(generator_loss, has_aux=True)(pg, pd, batch)
        upd, opt_g = tx.update(grads, state.opt_state["g"], pg)
        pg = optax.apply_updates(pg, upd)
        loss_d, grads = jax.value_and_grad(discriminator_loss)(pd, batch, fake)
        upd, opt_d = tx.update(grads, state.opt_state["d"], pd)
        pd = optax.apply_updates(pd, upd)
        return state.replace(step=state.step + 1, params={"g": pg, "d": pd},
                             opt_state={"g": opt_g, "d": opt_d}), dict(m, loss_d=loss_d)

    return jax.jit(step, donate_argnums=(0,))


@register("pix2pix", harmonizer=Pix2PixHarmonizer)
def fit(config, train: TrainingSet, name: str = "pix2pix", *, workdir: str, progress: bool = True,
        **_) -> Pix2PixHarmonizer:
    """Train Pix2Pix on the paired slices of ``train`` (checkpoints in ``workdir``).

    Raises InputError when a training subject lacks a target-site scan (it needs pairs).
    """
    train = require_training_set(train)
    cfg = pix2pix_config(config)
    # SlicePairs pads to a multiple of 2^(depth - 1): one level more for 2^depth
    data = networks.SlicePairs(train, cfg["depth"] + 1, config.data.min_mask_fraction,
                               cfg["context"], method="Pix2Pix", directory=workdir)
    gen, disc = make_nets(cfg)
    tx = gan_optimizer(cfg)
    x = jnp.zeros((1,) + data.padded + (2 * cfg["context"] + 1,))
    params = {"g": init_params(gen, 2 * config.seed, x),
              "d": init_params(disc, 2 * config.seed + 1, jnp.concatenate([x, x[..., :1]], -1))}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state={"g": tx.init(params["g"]), "d": tx.init(params["d"])})

    def batch_fn(i):
        site, idx = data.sample(i, cfg["batch_size"], config.seed)
        b = data.batch(site, idx)
        return {k: b[k] for k in ("source", "target", "mask")}

    state = fit_loop(state, make_pix2pix_step(cfg, gen, disc, tx), batch_fn, cfg["steps"],
                     workdir, checkpoint_every=config.train.checkpoint_every,
                     log_every=config.train.log_every, progress=progress, desc="Pix2Pix")
    return Pix2PixHarmonizer(jax.device_get(state.params["g"]), cfg, config.eval.batch_size,
                             **fitted_fields(train, name, needs_protocol=False))
