"""Radiomics-guided CycleGAN (Kim et al., IEEE Access 12:19482, 2024) as a method: unpaired
source-site slices <-> target-site slices.

Networks (:mod:`phyjax.models.gan`): ResNet generators ``G_ab`` (source -> target) and ``G_ba``,
PatchGAN discriminators ``D_a``, ``D_b`` (least-squares GAN) and, with
``config.cyclegan.use_segmenters``, two segmenters ``S_a``, ``S_b`` trained first on each domain's
slices and frozen.  The generators minimize (Zhu et al. 2017; Kim et al. 2024, their eq. 5):

    L_G = L_lsgan(D_b(G_ab(a))) + L_lsgan(D_a(G_ba(b)))
          + w_cycle (|G_ba(G_ab(a)) - a| + |G_ab(G_ba(b)) - b|)
          + w_identity (|G_ab(b) - b| + |G_ba(a) - a|)
          + w_dice [Dice(S_b(G_ab(a)), S_a(a)) + Dice(S_a(G_ba(b)), S_b(b))]   (use_segmenters)
          + w_rf  RF(G_ab(a))                                                   (use_rf_loss)

``RF`` (:func:`phyjax.losses.radiomic.rf_loss`) is the relative L1 between the *soft*, hence
differentiable, radiomic features of the harmonized slice's ROI and the target site's values of
the features selected as Kim et al. do (:func:`phyjax.radiomics.selection.select_features`:
lowest coefficient of variation over the target-site training slices, then drop features with
|Pearson r| > 0.8 against a better-ranked one; ``rf_top_k`` of them).  The discriminators minimize
the LSGAN loss on real slices and the generators' current outputs (no image pool).

Unpaired by construction: domain A is the non-target scans of one half of the training subjects,
domain B the target scans of the other half (``cyclegan.disjoint``; on data without traveling
subjects the subjects differ anyway).  With ``cyclegan.per_site`` (default) each source site is
a domain A of its own with its own generators, discriminators and source-side segmenter (Kim et
al. harmonize one vendor pair); the target segmenter and the feature selection are shared.  A
generator whose convolutions see instance-normalized features cannot tell sites apart by their
intensity level (it is invariant to an affine change of its input), so one generator for
several source sites can only learn their average correction.

Generators: ``cyclegan.residual`` (default) makes them ``input + correction`` with the
correction's last layer zero-initialized (:func:`phyjax.models.gan.residual_output`): training
starts at the unharmonized image instead of a random one.  Segmenter labels: ``seg_labels = "tissue"`` -- the fixed
HMRF tissue segmenter's CSF/GM/WM labels inside the brain mask
(:class:`phyjax.evaluate.segmentation.TissueSegmenter`, the paper's frozen site segmenters trained
on it); ``"roi"`` -- the ROI mask itself (e.g. the tumour on real data); ``"auto"``: tissue for a
brain mask, ROI otherwise.

Slices are single axial slices (no neighbours), padded to a multiple of ``2 ** n_down``; image
intensities (normalized, :func:`phyjax.data.volumes.normalize`) are mapped from
``[0, intensity_max]`` to the generators' ``[-1, 1]``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from phyjax.data.nifti import InputError
from phyjax.data.slices import brain_slices, from_slices, pad_to_multiple, to_slices, with_context
from phyjax.data.split import TrainingSet, require_training_set
from phyjax.data.store import SliceStore
from phyjax.losses.radiomic import (
    l1,
    lsgan_discriminator,
    lsgan_generator,
    radiomics_config,
    relative_errors,
    rf_loss,
    soft_dice_loss,
    soft_features,
)
from phyjax.methods import networks
from phyjax.methods.base import Harmonizer, base_fields, fitted_fields, register
from phyjax.models.gan import PatchDiscriminator, ResnetGenerator, Segmenter, init_params
from phyjax.radiomics.api import RadiomicsConfig, extract_batch, feature_names
from phyjax.radiomics.selection import select_features
from phyjax.train import TrainState, make_train_step
from phyjax.train import fit as fit_loop

SEG_LABELS = ("auto", "tissue", "roi")
#: classes of each segmenter label kind (tissue: CSF, GM, WM inside the mask; roi: out, in)
N_CLASSES = {"tissue": 3, "roi": 2}


def to_net(x, intensity_max: float):
    """Normalized intensities ``[0, intensity_max]`` -> the networks' ``[-1, 1]`` (clipped)."""
    return 2.0 * jnp.clip(x, 0.0, intensity_max) / intensity_max - 1.0


def to_image(y, intensity_max: float):
    """Inverse of :func:`to_net`."""
    return (y + 1.0) * (0.5 * intensity_max)


def cyclegan_config(config) -> dict:
    """The method's settings (``config.cyclegan``; JSON-able, saved with the harmonizer).

    Raises ValueError for an unknown ``seg_labels`` or non-positive sizes.
    """
    c = config.cyclegan
    if c.seg_labels not in SEG_LABELS:
        raise ValueError(f"cyclegan.seg_labels must be one of {SEG_LABELS}, got {c.seg_labels!r}.")
    for k in ("steps", "batch_size", "features", "disc_features", "rf_top_k", "intensity_max"):
        if not c[k] > 0:
            raise ValueError(f"cyclegan.{k} must be positive, got {c[k]!r}.")
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in c.to_dict().items()}


def make_nets(cfg: dict):
    """``(generator, discriminator, segmenter factory)`` of the settings."""
    # "stride1": this option's name for "phases" while it also rewrote stride-2 convolutions
    # (same values; harmonizers saved then load)
    impl = cfg.get("conv_impl", "phases")
    impl = {"stride1": "phases"}.get(impl, impl)
    gen = ResnetGenerator(features=cfg["features"], n_blocks=cfg["n_blocks"],
                          n_down=cfg["n_down"], residual=bool(cfg.get("residual", False)),
                          conv_impl=impl)
    disc = PatchDiscriminator(features=cfg["disc_features"], n_layers=cfg["disc_layers"],
                              conv_impl=impl)
    return gen, disc


def seg_kind(cfg: dict, mask_label: str) -> str:
    if cfg["seg_labels"] != "auto":
        return cfg["seg_labels"]
    return "tissue" if mask_label == "brain" else "roi"


def slice_multiple(cfg: dict) -> int:
    """In-plane size multiple the generator and segmenter need."""
    return max(2 ** cfg["n_down"], 2 ** (len(cfg["seg_features"]) - 1))


# ----------------------------------------------------------------------------------------------
# data


def domains(train: TrainingSet, disjoint: bool) -> tuple[list, list, list[str]]:
    """``(A scans, B scans, notes)``: volumes of the source domain (every non-target site) and of
    the target domain.  With ``disjoint`` a subject scanned at the target site *and* elsewhere
    goes to one domain only (alternately, in sorted order), so the two domains hold different
    people.  Raises InputError when either domain is empty."""
    target, notes = train.target_site, []
    both = [s for s in train.subjects if target in train.volumes[s]
            and any(site != target for site in train.volumes[s])]
    a_subj = [s for s in train.subjects if s not in both or not disjoint or s in both[0::2]]
    b_subj = [s for s in train.subjects if s not in both or not disjoint or s in both[1::2]]
    if disjoint and both and len(both) < 2:
        a_subj = b_subj = list(train.subjects)
        notes.append("cyclegan: one traveling training subject only; both domains use it.")
    a = [train.volumes[s][site] for s in a_subj for site in sorted(train.volumes[s])
         if site != target]
    b = [train.volumes[s][target] for s in b_subj if target in train.volumes[s]]
    if not a or not b:
        raise InputError(f"the radiomics CycleGAN needs training scans from the target site "
                         f"{target!r} and from other sites; it has {len(b)} and {len(a)}.")
    return a, b, notes


class DomainSlices:
    """Axial slices (ROI slices only) of a list of volumes, with masks and segmenter labels, on
    disk (:class:`~phyjax.data.store.SliceStore`).

    ``labels(volume) -> (X, Y, Z) int`` or None (no labels stored).  Batch ``i`` draws its rows
    with ``numpy.random.default_rng([seed, i, salt])`` (a pure function of the step).
    """

    def __init__(self, volumes, multiple: int, min_fraction: float, labels=None,
                 directory: str | None = None):
        self.pads = pad_to_multiple(volumes[0].image.shape[:2], multiple)
        self.padded = tuple(n + sum(p) for n, p in zip(volumes[0].image.shape[:2], self.pads))
        self.store = SliceStore.temporary(directory, self.pads, prefix=".slices-")
        self.has_labels = labels is not None
        rows = []
        for k, v in enumerate(volumes):
            if v.image.shape != volumes[0].image.shape:
                raise InputError(f"{v.path}: shape {v.image.shape} differs from "
                                 f"{volumes[0].path} ({volumes[0].image.shape}); the CycleGAN "
                                 "trains on volumes of one grid (config.data.grid_mm).")
            self.store.add(f"{k}/image", v.image)
            self.store.add(f"{k}/mask", v.mask)
            if labels is not None:
                self.store.add(f"{k}/label", labels(v))
            rows += [(k, z) for z in brain_slices(v.mask, min_fraction)]
        self.rows = np.asarray(rows, int).reshape(-1, 2)

    def batch(self, idx) -> dict[str, np.ndarray]:
        """``image``, ``mask`` (and ``label``) ``(n, H, W, 1)`` of rows ``idx``."""
        rows = self.rows[np.asarray(idx)]
        out = {"image": self.store.gather(rows, lambda k: f"{k}/image"),
               "mask": self.store.gather(rows, lambda k: f"{k}/mask")}
        if self.has_labels:
            out["label"] = self.store.gather(rows, lambda k: f"{k}/label")
        return out

    def sample(self, i: int, batch_size: int, seed: int, salt: int) -> np.ndarray:
        n = len(self.rows)
        return np.random.default_rng([seed, i, salt]).choice(n, size=batch_size,
                                                             replace=n < batch_size)


def label_maker(kind: str, segmenter):
    """``volume -> (X, Y, Z) int`` class labels for segmenter training (see module docstring)."""
    if kind == "roi":
        return lambda v: np.asarray(v.mask, np.int8)
    # HMRF labels 1..3 (CSF, GM, WM) inside the mask -> 0..2; outside the mask the Dice and the
    # cross-entropy do not count
    return lambda v: np.clip(segmenter(v.image, v.mask).astype(np.int8) - 1, 0, 2)


# ----------------------------------------------------------------------------------------------
# segmenters


def seg_region(kind: str, mask):
    """Where a segmenter's classes count: the ROI (tissue) or the whole slice (roi)."""
    return mask if kind == "tissue" else jnp.ones_like(mask)


def segmenter_trainer(cfg: dict, kind: str):
    """``(model, tx, step)`` of a :class:`~phyjax.models.gan.Segmenter` (cross-entropy + soft
    Dice in :func:`seg_region`); one compiled step serves both domains."""
    model = Segmenter(n_classes=N_CLASSES[kind], features=tuple(cfg["seg_features"]))
    imax = cfg["intensity_max"]
    tx = optax.adam(cfg["seg_learning_rate"])

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, to_net(batch["image"], imax))
        onehot = jax.nn.one_hot(batch["label"][..., 0].astype(jnp.int32), N_CLASSES[kind])
        region = seg_region(kind, batch["mask"])
        ce = -jnp.sum(region * jnp.sum(onehot * jax.nn.log_softmax(logits), -1, keepdims=True))
        ce = ce / jnp.maximum(jnp.sum(region), 1.0)
        dice = soft_dice_loss(jax.nn.softmax(logits), onehot, region)
        return ce + dice, {"loss": ce + dice, "ce": ce, "dice": dice}

    return model, tx, make_train_step(loss_fn, tx)


def train_segmenter(cfg: dict, trainer, data: DomainSlices, seed: int, salt: int,
                    workdir: str, progress: bool, desc: str):
    """Train one segmenter (``trainer``: :func:`segmenter_trainer`) on ``data``'s labels;
    returns its parameters (then frozen)."""
    model, tx, step = trainer
    params = init_params(model, seed + salt, jnp.zeros((1,) + data.padded + (1,)))

    def batch_fn(i):
        return (data.batch(data.sample(i, cfg["batch_size"], seed, salt)),)

    state = fit_loop(TrainState.create(params, tx), step, batch_fn, cfg["seg_steps"], workdir,
                     checkpoint_every=max(cfg["seg_steps"], 1), log_every=10,
                     progress=progress, desc=desc)
    return state.params


# ----------------------------------------------------------------------------------------------
# radiomic features


def select_rf(cfg: dict, data: DomainSlices):
    """Kim et al.'s selection on the soft features of (up to ``rf_select_slices``) target-domain
    slices: ``(names, target means, cv of the selected, radiomics config)``."""
    n = min(len(data.rows), cfg["rf_select_slices"])
    idx = np.sort(np.random.default_rng(0).choice(len(data.rows), n, replace=False))
    base = RadiomicsConfig(bin_width=cfg["rf_bin_width"], n_bins=cfg["rf_n_bins"], force2d=True,
                           classes=tuple(cfg["rf_classes"]))
    names = feature_names(base)
    values = {k: [] for k in names}
    for i in range(0, n, 8):
        b = data.batch(idx[i:i + 8])
        f = extract_batch(b["image"][..., 0], b["mask"][..., 0] > 0.5, base,
                          temperature=cfg["rf_temperature"])
        for k in names:
            values[k] += list(np.asarray(f[k], np.float64))
    sel = select_features(values, corr_threshold=cfg["rf_corr_threshold"], top_k=cfg["rf_top_k"])
    if not sel.names:
        raise InputError("radiomics CycleGAN: no radiomic feature of the target slices has a "
                         "finite, nonzero mean to select.")
    rcfg = radiomics_config(sel.names, cfg["rf_bin_width"], cfg["rf_n_bins"])
    return sel.names, np.asarray(sel.target_means, np.float32), \
        {k: sel.cv[k] for k in sel.names}, rcfg


def rf_errors(names, target, rcfg, temperature, images, masks, batch: int = 8) -> np.ndarray:
    """Mean relative error per selected feature over images ``(n, H, W, 1)`` (host loop over
    batches of ``batch``; one compilation per settings, cached)."""
    fn = _features_fn(tuple(names), rcfg, float(temperature))
    errs = [np.asarray(relative_errors(fn(images[i:i + batch], masks[i:i + batch]), target))
            for i in range(0, len(images), batch)]
    return np.concatenate(errs).mean(0)


_FEATURE_FNS: dict = {}


def _features_fn(names: tuple, rcfg, temperature: float):
    key = (names, rcfg, temperature)
    if key not in _FEATURE_FNS:
        _FEATURE_FNS[key] = jax.jit(lambda x, m: soft_features(x, m, names, rcfg, temperature))
    return _FEATURE_FNS[key]


# ----------------------------------------------------------------------------------------------
# the harmonizer


def apply_batched(fn, params, x, batch_size: int) -> np.ndarray:
    """``fn(params, x[i:i + batch_size])`` over ``x`` in equal batches (the last zero-padded, so
    one compilation serves every call), concatenated, as NumPy."""
    n = len(x)
    total = -(-n // batch_size) * batch_size
    x = np.concatenate([x, np.zeros((total - n,) + x.shape[1:], x.dtype)])
    return np.concatenate([np.asarray(jax.device_get(fn(params, x[i:i + batch_size])))
                           for i in range(0, total, batch_size)])[:n]


def predict_slices(fn, params, image, mask, multiple: int, batch_size: int, context: int = 0):
    """Run ``fn(params, slices (B, H, W, 2 context + 1)) -> (B, H, W, 1)`` over every axial
    slice of ``image (X, Y, Z)``; returns ``(X, Y, Z)`` float32, 0 outside ``mask``."""
    pads = pad_to_multiple(image.shape[:2], multiple)
    src = with_context(to_slices(np.asarray(image, np.float32), pads), context)
    vol = from_slices(apply_batched(fn, params, src, batch_size)[..., 0], pads)
    return np.where(mask, vol, 0.0).astype(np.float32)


_GENERATOR_FNS: dict = {}


def generator_fn(cfg: dict):
    """Jit-compiled ``(params, slices) -> harmonized slices`` (image units) of ``G_ab``; one per
    settings, shared by every harmonizer with them (a loaded one compiles nothing new)."""
    key = json.dumps(cfg, sort_keys=True, default=list)
    if key not in _GENERATOR_FNS:
        gen, _ = make_nets(cfg)
        imax = cfg["intensity_max"]
        _GENERATOR_FNS[key] = jax.jit(
            lambda p, x: to_image(gen.apply({"params": p}, to_net(x, imax)), imax))
    return _GENERATOR_FNS[key]


#: key of the one generator trained on every source site (``cyclegan.per_site = False``)
ALL_SITES = "*"


class CycleGANHarmonizer(Harmonizer):
    """Trained ``G_ab`` (source -> target) per source site (``params``: ``{site: generator
    parameters}``; the key :data:`ALL_SITES` for one generator of every site) with its settings;
    ``rf`` holds the selected features, their target values and the training relative errors
    before/after.  Harmonizing a scan from a source site without its own generator raises
    InputError; a target-site scan is returned unchanged (:meth:`harmonize`)."""

    def __init__(self, params, cfg: dict, rf: dict, batch_size: int, **base):
        super().__init__(**base)
        if "Conv_0" in params:            # saved before per-site generators: one for all
            params = {ALL_SITES: params}
        self.params, self.cfg, self.rf, self.batch_size = params, dict(cfg), rf, int(batch_size)
        self._fn = generator_fn(self.cfg)

    def generator_params(self, site: str):
        """The generator of ``site`` (or the one of every site)."""
        if site in self.params:
            return self.params[site]
        if ALL_SITES in self.params:
            return self.params[ALL_SITES]
        raise InputError(f"the radiomics CycleGAN has generators for sites "
                         f"{sorted(self.params)}, not for {site!r} (cyclegan.per_site).")

    def harmonize(self, volume) -> np.ndarray:
        """``volume`` mapped to the target site (0 outside its mask).  A scan from the target
        site itself is returned unchanged when every source site has its own generator (none
        was trained on target -> target); with one generator for all sites it goes through it,
        as every scan does."""
        if volume.site == self.target_site and ALL_SITES not in self.params:
            return np.where(volume.mask, volume.image, 0.0).astype(np.float32)
        return predict_slices(self._fn, self.generator_params(volume.site), volume.image,
                              volume.mask, slice_multiple(self.cfg), self.batch_size)

    def save_state(self, directory: str) -> dict:
        networks.save_params(self.params, directory)
        return {"cyclegan": self.cfg, "rf": self.rf, "batch_size": self.batch_size}

    @classmethod
    def load_state(cls, directory: str, meta: dict) -> CycleGANHarmonizer:
        s = meta["state"]
        return cls(networks.load_params(directory), s["cyclegan"], s["rf"], s["batch_size"],
                   **base_fields(meta))


# ----------------------------------------------------------------------------------------------
# training


def gan_schedule(cfg: dict) -> optax.Schedule:
    """The CycleGAN learning rate: ``cfg["learning_rate"]`` for the first half of
    ``cfg["steps"]``, then linearly to 0 at the last step."""
    half = max(cfg["steps"] // 2, 1)
    return optax.join_schedules(
        [optax.constant_schedule(cfg["learning_rate"]),
         optax.linear_schedule(cfg["learning_rate"], 0.0, max(cfg["steps"] - half, 1))], [half])


def gan_optimizer(cfg: dict) -> optax.GradientTransformation:
    """Adam (beta1 = 0.5, beta2 = 0.999) with :func:`gan_schedule` (Zhu et al. 2017)."""
    return optax.adam(gan_schedule(cfg), b1=0.5, b2=0.999)


def make_cyclegan_step(cfg: dict, gen, disc, tx, seg=None, rf=None, fuse: bool = True):
    """Jit-compiled ``(state, batch) -> (state, metrics)``: one generator update (both
    generators, :func:`generator_loss`) then one discriminator update on the generators'
    outputs of that forward pass.  ``state.params``: ``{"g": {"ab", "ba"}, "d": {"a", "b"}}``,
    ``state.opt_state``: ``{"g", "d"}``; the state is donated.

    ``seg``: ``(model, kind)`` of the frozen segmenters or None; their parameters come in the
    batch (``batch["seg_a"]``, ``batch["seg_b"]``), so one compilation serves every source site;
    ``rf``: ``(names, target (K,), radiomics config)`` or None.
    ``fuse``: run each network once per stage on the concatenated batches that go through it
    (``G_ab`` on ``[a; b]`` gives the translation and the identity image, each discriminator
    sees ``[real; fake]``) -- the same values (instance norm and convolutions act per sample),
    fewer, larger convolutions (``benchmarks/cyclegan_step.py``).
    """
    imax = cfg["intensity_max"]
    idt_on = cfg["w_identity"] > 0

    def both(p, x, y):
        """``(net(x), net(y))`` in one call when fusing."""
        if not fuse:
            return g_apply(p, x), g_apply(p, y)
        out = g_apply(p, jnp.concatenate([x, y]))
        return out[:x.shape[0]], out[x.shape[0]:]

    def g_apply(p, x):
        return gen.apply({"params": p}, x)

    def d_apply(p, x):
        return disc.apply({"params": p}, x)

    def generator_loss(pg, pd, batch):
        a, b = to_net(batch["a"], imax), to_net(batch["b"], imax)
        if idt_on:
            (fake_b, idt_b), (fake_a, idt_a) = both(pg["ab"], a, b), both(pg["ba"], b, a)
        else:
            fake_b, fake_a = g_apply(pg["ab"], a), g_apply(pg["ba"], b)
        rec_a, rec_b = g_apply(pg["ba"], fake_b), g_apply(pg["ab"], fake_a)
        adv = lsgan_generator(d_apply(pd["b"], fake_b)) + lsgan_generator(d_apply(pd["a"], fake_a))
        cyc = l1(rec_a, a) + l1(rec_b, b)
        loss = adv + cfg["w_cycle"] * cyc
        m = {"adv": adv, "cycle": cyc}
        if idt_on:
            idt = l1(idt_b, b) + l1(idt_a, a)
            loss, m["identity"] = loss + cfg["w_identity"] * idt, idt
        if seg is not None:
            model, kind = seg
            sa, sb = batch["seg_a"], batch["seg_b"]
            prob = lambda p, x: jax.nn.softmax(model.apply({"params": p}, x))
            ref_a = jax.lax.stop_gradient(prob(sa, a))
            ref_b = jax.lax.stop_gradient(prob(sb, b))
            dice = (soft_dice_loss(prob(sb, fake_b), ref_a, seg_region(kind, batch["mask_a"]))
                    + soft_dice_loss(prob(sa, fake_a), ref_b, seg_region(kind, batch["mask_b"])))
            loss, m["dice"] = loss + cfg["w_dice"] * dice, dice
        if rf is not None:
            names, target, rcfg = rf
            k = cfg["rf_batch"]
            harm = to_image(fake_b[:k], imax) * batch["mask_a"][:k]
            rfl, _ = rf_loss(harm, batch["mask_a"][:k], names, target, rcfg,
                             cfg["rf_temperature"])
            loss, m["rf"] = loss + cfg["w_rf"] * rfl, rfl
        m["loss_g"] = loss
        return loss, (m, jax.lax.stop_gradient(fake_a), jax.lax.stop_gradient(fake_b))

    def discriminator_loss(pd, batch, fake_a, fake_b):
        a, b = to_net(batch["a"], imax), to_net(batch["b"], imax)
        loss = 0.0
        for p, real, fake in ((pd["a"], a, fake_a), (pd["b"], b, fake_b)):
            if fuse:
                out = d_apply(p, jnp.concatenate([real, fake]))
                d_real, d_fake = out[:real.shape[0]], out[real.shape[0]:]
            else:
                d_real, d_fake = d_apply(p, real), d_apply(p, fake)
            loss = loss + lsgan_discriminator(d_real, d_fake)
        return loss

    def step(state, batch):
        pg, pd = state.params["g"], state.params["d"]
        grads_g, (m, fake_a, fake_b) = jax.grad(generator_loss, has_aux=True)(pg, pd, batch)
        upd, opt_g = tx.update(grads_g, state.opt_state["g"], pg)
        pg = optax.apply_updates(pg, upd)
        loss_d, grads_d = jax.value_and_grad(discriminator_loss)(pd, batch, fake_a, fake_b)
        upd, opt_d = tx.update(grads_d, state.opt_state["d"], pd)
        pd = optax.apply_updates(pd, upd)
        m = dict(m, loss_d=loss_d, loss=m["loss_g"])
        return state.replace(step=state.step + 1, params={"g": pg, "d": pd},
                             opt_state={"g": opt_g, "d": opt_d}), m

    return jax.jit(step, donate_argnums=(0,))


def init_state(cfg: dict, gen, disc, shape, seed: int, tx) -> TrainState:
    """Fresh parameters of both generators and discriminators and their optimizer states."""
    x = jnp.zeros((1,) + tuple(shape) + (1,))
    params = {"g": {"ab": init_params(gen, 4 * seed, x), "ba": init_params(gen, 4 * seed + 1, x)},
              "d": {"a": init_params(disc, 4 * seed + 2, x),
                    "b": init_params(disc, 4 * seed + 3, x)}}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={"g": tx.init(params["g"]), "d": tx.init(params["d"])})


#: registered names -> the settings they force: the method, and the ablation of Kim et al.
#: (their Tables 3-5) as methods of their own, so that one benchmark run shows all three
VARIANTS = {"cyclegan_radiomics": {},
            "cyclegan_radiomics_noseg": {"use_segmenters": False},
            "cyclegan_radiomics_norf": {"use_rf_loss": False}}


@register(*VARIANTS, harmonizer=CycleGANHarmonizer)
def fit(config, train: TrainingSet, name: str = "cyclegan_radiomics", *, workdir: str,
        progress: bool = True, **_) -> CycleGANHarmonizer:
    """Train the radiomics-guided CycleGAN on ``train`` (module docstring); checkpoints and
    ``train_log.csv`` in ``workdir`` (``workdir/site-<site>`` per source site with
    ``cyclegan.per_site``), the selected features and their relative errors before and after
    (training slices) in ``workdir/rf_selection.json``.  ``name``: a key of :data:`VARIANTS`
    (``config.cyclegan.use_segmenters`` / ``use_rf_loss`` apply to ``cyclegan_radiomics``; the
    ablation names switch one term off)."""
    train = require_training_set(train)
    cfg = dict(cyclegan_config(config), **VARIANTS[name])
    seed, min_fraction = int(config.seed), float(config.data.min_mask_fraction)
    kind = seg_kind(cfg, config.data.get("mask_label", "brain"))
    a_vols, b_vols, notes = domains(train, cfg["disjoint"])
    labels = None
    if cfg["use_segmenters"]:
        from phyjax.evaluate.segmentation import TissueSegmenter
        from phyjax.experiments.common import tissue_segmenter

        hmrf = (tissue_segmenter(config.segmentation) if "segmentation" in config
                else TissueSegmenter())
        labels = label_maker(kind, hmrf)
    mult = slice_multiple(cfg)
    data_b = DomainSlices(b_vols, mult, min_fraction, labels, workdir)
    gen, disc = make_nets(cfg)
    trainer = segmenter_trainer(cfg, kind) if cfg["use_segmenters"] else None
    sb = (train_segmenter(cfg, trainer, data_b, seed, 12, os.path.join(workdir, "seg_b"),
                          progress, "segmenter B") if trainer else None)
    names, target, cv, rcfg = select_rf(cfg, data_b)
    rf = (names, jnp.asarray(target), rcfg) if cfg["use_rf_loss"] else None
    tx = gan_optimizer(cfg)
    step = make_cyclegan_step(cfg, gen, disc, tx, (trainer[0], kind) if trainer else None, rf)
    bs = cfg["batch_size"]

    # one CycleGAN per source site (Kim et al.'s vendor pair) or one for all of them
    groups = ({v.site: [w for w in a_vols if w.site == v.site] for v in a_vols}
              if cfg.get("per_site", False) else {ALL_SITES: a_vols})
    params, per_site_rf, n_a = {}, {}, {}
    for k, site in enumerate(sorted(groups)):
        sub = workdir if site == ALL_SITES else os.path.join(workdir, f"site-{_safe(site)}")
        data_a = DomainSlices(groups[site], mult, min_fraction, labels, workdir)
        tag = "" if site == ALL_SITES else f" {site}"
        sa = (train_segmenter(cfg, trainer, data_a, seed, 11 + 10 * k,
                              os.path.join(sub, "seg_a"), progress, "segmenter A" + tag)
              if trainer else None)
        state = init_state(cfg, gen, disc, data_a.padded, seed, tx)

        def batch_fn(i, data_a=data_a, sa=sa, k=k):
            a = data_a.batch(data_a.sample(i, bs, seed, 1 + 10 * k))
            b = data_b.batch(data_b.sample(i, bs, seed, 2))
            out = {"a": a["image"], "mask_a": a["mask"], "b": b["image"], "mask_b": b["mask"]}
            if trainer:
                out.update(seg_a=sa, seg_b=sb)
            return out

        state = fit_loop(state, step, batch_fn, cfg["steps"], sub,
                         checkpoint_every=config.train.checkpoint_every,
                         log_every=config.train.log_every, progress=progress,
                         desc="CycleGAN" + tag)
        params[site] = jax.device_get(state.params["g"]["ab"])
        # relative errors of the selected features on this domain's training slices, before/after
        idx = np.random.default_rng(1).choice(len(data_a.rows), min(len(data_a.rows), 32),
                                              replace=False)
        probe = data_a.batch(np.sort(idx))
        harm = apply_batched(generator_fn(cfg), params[site], probe["image"],
                             config.eval.batch_size)
        per_site_rf[site] = [
            rf_errors(names, target, rcfg, cfg["rf_temperature"], probe["image"], probe["mask"]),
            rf_errors(names, target, rcfg, cfg["rf_temperature"], harm * probe["mask"],
                      probe["mask"])]
        n_a[site] = len(data_a.rows)
    before = np.mean([v[0] for v in per_site_rf.values()], axis=0)
    after = np.mean([v[1] for v in per_site_rf.values()], axis=0)
    rf_info = {"features": names, "target": [float(x) for x in target],
               "cv": {k: float(v) for k, v in cv.items()},
               "relerr_before": [float(x) for x in before],
               "relerr_after": [float(x) for x in after],
               "relerr_per_site": {s_: {"before": [float(x) for x in v[0]],
                                        "after": [float(x) for x in v[1]]}
                                   for s_, v in per_site_rf.items()},
               "segmenter_labels": kind if cfg["use_segmenters"] else None,
               "n_slices": {"a": n_a, "b": len(data_b.rows)}, "notes": notes}
    harmonizer = CycleGANHarmonizer(params, cfg, rf_info, config.eval.batch_size,
                                    **fitted_fields(train, name, needs_protocol=False))
    with open(os.path.join(workdir, "rf_selection.json"), "w") as f:
        json.dump(rf_info, f, indent=2)
    return harmonizer


def _safe(site: str) -> str:
    """A folder name for a site label."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in site)
