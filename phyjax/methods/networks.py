"""What the slice networks (U-Net, PhyCHarm) share: training pairs, batches, optimizer, inference.

Training data: for every site of the training subjects (the target included: the identity is a
valid harmonization), the brain slices of each source scan with the same subject's target-site
slices (:class:`SlicePairs`, read from disk per batch).  Batch ``i`` cycles through the sites
and draws its slices with ``numpy.random.default_rng([seed, i])``: a pure function of the step,
so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Callable, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import optax

from phyjax.config_files import check_number
from phyjax.data.nifti import InputError
from phyjax.data.slices import (check_views, from_slices, grid, slice_mask, to_slices,
                                unview_volume, view_brain_slices, view_cycle, view_grids,
                                view_key, view_volume, with_context)
from phyjax.data.store import SliceStore
from phyjax.data.split import TrainingSet
from phyjax.methods.base import Harmonizer, base_fields
from phyjax.methods.calibration import calibrate_output
from phyjax.physics.sequences import Protocol, encode


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """AdamW with warm-up + cosine decay to 5 % and global-norm clipping at 1 (``config.train``);
    with ``train.ema`` > 0 the chain also keeps an exponential moving average of the parameters
    (:func:`params_ema`; the trained network is then :func:`trained_params`' average).

    Raises InputError when ``train.ema`` is not in [0, 1)."""
    t = train_cfg
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps,
                                                  max(t.steps, t.warmup_steps + 1),
                                                  end_value=0.05 * t.learning_rate)
    chain = [optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4)]
    decay = check_ema(t.get("ema", 0.0))
    if decay > 0:
        chain.append(params_ema(decay))
    return optax.chain(*chain)


def check_ema(value, key: str = "config.train.ema") -> float:
    """``value`` as a float if it is in [0, 1) (0: no average), else InputError naming ``key``."""
    return check_number(value, key, low=0.0, high=1.0, high_open=True,
                        note="the decay of the parameters' moving average per step; 0 = none")


class ParamsEMAState(NamedTuple):
    """:func:`params_ema`'s state: ``ema`` the decayed sum of the parameters after each step
    (a pytree like the parameters), ``weight`` its total weight ``1 - decay**steps``."""

    ema: Any
    weight: Any


def params_ema(decay: float) -> optax.GradientTransformation:
    """An optax transformation that leaves the updates alone and keeps an exponential moving
    average of the parameters they produce (Polyak-Ruppert averaging with exponential weights;
    Polyak & Juditsky, SIAM J. Control Optim. 1992). Place it last in a chain, so that the
    ``updates`` it sees are the final ones: after step ``n`` with parameters ``p_1 .. p_n``,
    :func:`averaged_params` gives ``sum_k decay**(n-k) (1 - decay) p_k / (1 - decay**n)`` -- a
    weighted mean of the iterates, whose weights sum to 1 from the first step (zero start,
    debiased; the random initialisation gets no weight). Its state is part of the optimizer
    state, hence checkpointed and resumed with it.

    Args: ``decay`` in (0, 1): the weight kept per step (0.995: a window of ~200 steps).
    Raises ValueError from ``update`` when called without ``params``."""

    def init(params):
        return ParamsEMAState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("params_ema needs the parameters: tx.update(grads, state, params).")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, new)
        return updates, ParamsEMAState(ema, decay * state.weight + (1.0 - decay))

    return optax.GradientTransformation(init, update)


def averaged_params(opt_state) -> Any | None:
    """The moving average a :func:`params_ema` in ``opt_state`` keeps (debiased), or None when
    the optimizer has none or has not stepped."""
    found = [s for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, ParamsEMAState)) if isinstance(s, ParamsEMAState)]
    if not found or float(found[-1].weight) <= 0:
        return None
    state = found[-1]
    return jax.tree.map(lambda e: e / state.weight, state.ema)


def trained_params(state) -> Any:
    """The network a training ``state`` (:class:`phyjax.train.loop.TrainState`) hands to
    inference: the parameters' moving average where the optimizer keeps one
    (``config.train.ema`` > 0), else the last step's parameters."""
    averaged = averaged_params(state.opt_state)
    return state.params if averaged is None else averaged


class SlicePairs:
    """Paired 2.5-D training slices of every site of a training set, on disk.

    Every scan's slices go into a :class:`~phyjax.data.store.SliceStore` (a temporary folder in
    ``directory``, removed with the object), so memory holds one batch, not the dataset.

    Attributes:
      sites: sorted sites (the target included); batch ``i`` comes from ``sites[i % n]``.
      views: slicing planes (:data:`phyjax.data.slices.VIEWS`); batch ``i`` is sliced in
        :meth:`view_of` ``(i)`` (cycling after the sites).
      rows: ``{(site, view): (N, 2) int array}`` of ``(subject index, slice)``: the brain
        slices (:func:`phyjax.data.slices.brain_slices` of the source mask) of every training
        subject in that view.
      protocols: ``{site: Protocol}`` (of the first training subject's scan).
      grids: ``{view: (pads, padded)}``; pads, padded: the first view's in-plane padding and
        padded slice shape for a U-Net of ``depth`` levels.
    """

    def __init__(self, train: TrainingSet, depth: int, min_fraction: float, context: int,
                 method: str = "a slice network", directory: str | None = None,
                 views=("axial",)):
        train.require_protocols(method)
        subjects, target = list(train.subjects), train.target_site
        unpaired = [s for s in subjects if target not in train.volumes[s]]
        if unpaired:
            raise InputError(f"{method} trains on paired scans (traveling subjects), but training "
                             f"subject(s) {unpaired} have no scan from the target site {target!r}.")
        self.sites, self.subjects, self.target = train.sites, subjects, target
        self.context, self.views = context, check_views(views)
        self.grids = view_grids(train.volumes[subjects[0]][target].image.shape, depth,
                                self.views)
        self.pads, self.padded = self.grids[self.views[0]]
        self.store = SliceStore.temporary(directory, self.pads, prefix=".slices-")
        self.rows, self.has_maps = {}, {}
        for site in self.sites:
            rows = {view: [] for view in self.views}
            for i, s in enumerate(subjects):
                v = train.volumes[s][site]
                self.has_maps[(s, site)] = v.t1 is not None and v.m0 is not None
                arrays = {"image": v.image, "mask": v.mask}
                if self.has_maps[(s, site)]:
                    arrays.update(t1=v.t1, m0=v.m0)
                for name, a in arrays.items():
                    self.store.add_views(f"{s}/{site}/{name}", a, self.grids)
                for view, zs in view_brain_slices(v.mask, min_fraction, self.views).items():
                    rows[view] += [(i, z) for z in zs]
            for view in self.views:
                self.rows[(site, view)] = np.asarray(rows[view], int).reshape(-1, 2)

    def view_of(self, i: int) -> str:
        """The slicing plane of batch ``i`` (:func:`phyjax.data.slices.view_cycle`)."""
        return view_cycle(i, len(self.sites), self.views)

    def sample(self, i: int, batch_size: int, seed: int) -> tuple[str, np.ndarray]:
        """``(site, row indices)`` of batch ``i`` (rows of :meth:`view_of` ``(i)``)."""
        site = self.sites[i % len(self.sites)]
        n = len(self.rows[(site, self.view_of(i))])
        idx = np.random.default_rng([seed, i]).choice(n, size=batch_size, replace=n < batch_size)
        return site, idx

    def batch(self, site: str, idx: np.ndarray, view: str = "axial") -> dict[str, np.ndarray]:
        """``source (B, H, W, 2 context + 1)``, ``target``, ``mask``, ``t1``, ``m0``
        ``(B, H, W, 1)`` of rows ``idx`` of ``view`` (maps are ones/zeros where no ground truth
        exists)."""
        rows = self.rows[(site, view)][idx]
        subj = self.subjects

        def key(s_site, name):
            return lambda i: view_key(f"{subj[i]}/{s_site}/{name}", view)

        out = {"source": self.store.gather(rows, key(site, "image"), self.context),
               "target": self.store.gather(rows, key(self.target, "image")),
               "mask": self.store.gather(rows, key(site, "mask"))}
        shape = out["mask"].shape
        out["t1"], out["m0"] = np.ones(shape, np.float32), np.zeros(shape, np.float32)
        with_maps = np.array([self.has_maps[(subj[i], site)] for i in rows[:, 0]])
        if with_maps.any():
            sel = rows[with_maps]
            out["t1"][with_maps] = self.store.gather(sel, key(site, "t1"))
            out["m0"][with_maps] = self.store.gather(sel, key(site, "m0"))
        return out


def check_mirror(p: float, key: str = "config.train.mirror") -> float:
    """``p`` as a float if it is a probability in [0, 1], else InputError naming ``key``."""
    return check_number(p, key, low=0.0, high=1.0, note="a probability")


def mirror_batch(arrays: dict, i: int, seed: int, p: float, view: str = "axial") -> dict:
    """Training batch ``arrays`` with each sample mirrored left-right with probability ``p``,
    every image-shaped array (``(B, H, W, ...)``: source, target, mask, maps) of a sample
    together; per-sample vectors (``(B, K)``, e.g. protocol codes) are left as they are.
    Axial and coronal slices (``view``) of a RAS grid have left-right as their first axis,
    which is flipped; a sagittal slice *is* its own mirror image (of the slice at the mirrored
    position), so there the neighbour channels (last axis) reverse their order.

    The draw is ``numpy.random.default_rng([seed, i, 29])``: a pure function of the step, so a
    resumed run sees the batches an uninterrupted one would.  ``p = 0`` returns ``arrays``.
    """
    if check_mirror(p, "mirror") == 0.0:
        return arrays
    sagittal = check_views(view, "view") == ("sagittal",)
    n = len(next(iter(arrays.values())))
    flip = np.random.default_rng([seed, i, 29]).random(n) < p
    out = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.ndim >= (4 if sagittal else 3) and flip.any():
            value = value.copy()
            value[flip] = value[flip][..., ::-1] if sagittal else value[flip][:, ::-1]
        out[key] = value
    return out


def mirrored(batch_fn: Callable, seed: int, p: float,
             view_of: Callable[[int], str] | None = None) -> Callable:
    """``batch_fn(i) -> (arrays, *rest)`` with ``arrays`` passed through :func:`mirror_batch`
    (``view_of(i)``: the slicing plane of batch ``i``; None: axial)."""
    p = check_mirror(p)
    if p == 0.0:
        return batch_fn

    def fn(i):
        arrays, *rest = batch_fn(i)
        return (mirror_batch(arrays, i, seed, p, view_of(i) if view_of else "axial"), *rest)

    return fn


#: Test-time augmentation of the slice networks (``tta`` of their settings): ``none``, or
#: ``flip`` -- the mean of the outputs on the scan and on its left-right mirror, mirrored back.
TTA = ("none", "flip")


def check_tta(tta: str, key: str = "config.model.tta") -> str:
    """``tta`` if it is one of :data:`TTA`, else InputError naming ``key``."""
    if tta not in TTA:
        raise InputError(f"{key}={tta!r}; expected one of {TTA}.")
    return tta


def mirror_axis(affine: np.ndarray) -> int:
    """The voxel axis (0, 1 or 2) along which ``affine`` (``(4, 4)``, voxel -> world mm)
    runs left-right, from :func:`nibabel.aff2axcodes` -- so a mirror flips the head's
    hemispheres whatever the storage order (RAS, LPS, a sagittal stack, ...).

    Raises InputError for an affine whose orientation names no left-right axis (degenerate).
    """
    codes = nib.aff2axcodes(np.asarray(affine, np.float64))
    for axis, code in enumerate(codes):
        if code in ("L", "R"):
            return axis
    raise InputError(f"the image's affine has no left-right axis (orientation {codes}); "
                     "cannot mirror it for test-time augmentation (tta=flip).")


def check_ensemble(n, key: str = "config.model.ensemble") -> int:
    """``n`` (networks trained and averaged, :func:`fit_ensemble`) as an int >= 1, else
    InputError naming ``key``."""
    try:
        whole = not isinstance(n, bool) and float(n).is_integer() and int(n) >= 1
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise InputError(f"{key}={n!r}; expected a whole number of networks >= 1.")
    return int(n)


def member_config(config, k: int, section: str):
    """The config of ensemble member ``k``: ``config`` with ``seed + k`` (every random draw of
    training: initialization, batch order, simulated heads and protocols) and
    ``config.<section>.ensemble = 1``."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.seed = int(config.seed) + k
        c[section].ensemble = 1
    return c


def fit_ensemble(fit_one: Callable, config, section: str, train, *, workdir: str,
                 **context) -> SliceNetworkHarmonizer | None:
    """Deep ensemble of a slice network (Lakshminarayanan et al., NeurIPS 2017; the model
    averaging of nnU-Net, Isensee et al., Nat. Methods 2021): ``config.<section>.ensemble``
    networks, member ``k`` trained by ``fit_one(member_config(config, k), train, ...)`` with
    seed ``config.seed + k`` (checkpoints: ``workdir`` for the first, ``workdir/member<k>``
    for the others, so each resumes on its own), returned as one harmonizer whose ``params`` is
    the list of members' and whose outputs are their mean (:func:`predict_volume`).

    Returns None when the setting is 1 (the caller trains its one network).  Raises InputError
    for a setting that is not a whole number >= 1.
    """
    n = check_ensemble(config[section].get("ensemble", 1), f"config.{section}.ensemble")
    if n == 1:
        return None
    members = []
    for k in range(n):
        print(f"[ensemble] network {k + 1} of {n} (seed {int(config.seed) + k})", flush=True)
        members.append(fit_one(member_config(config, k, section), train,
                               workdir=workdir if k == 0 else os.path.join(workdir, f"member{k}"),
                               **context))
    first = members[0]
    first.params = [m.params for m in members]
    first.cfg["ensemble"] = n
    return first


def predict_volume(predict: Callable, params: Any, image: np.ndarray, mask: np.ndarray,
                   protocol: Protocol, depth: int, batch_size: int, context: int,
                   tta: str = "none", mirror: int = 0, views=("axial",),
                   z_slices=None) -> dict:
    """Run ``predict(params, source, mask, code, B0)`` on every slice of a volume (an
    axis-aligned RAS grid) in every one of ``views`` (:data:`phyjax.data.slices.VIEWS`); more
    than one: the mean of the views' outputs, each put back on the volume's axes (multi-view
    aggregation, as FastSurfer's; Henschel et al., NeuroImage 2020).

    ``params`` a list (an ensemble, :func:`fit_ensemble`): the mean of every member's outputs
    (each with the same test-time augmentation).
    ``tta="flip"``: also on the volume mirrored along voxel axis ``mirror`` (see
    :func:`mirror_axis`), that output mirrored back and averaged with the first (mirroring
    test-time augmentation, as nnU-Net's; Isensee et al., Nat. Methods 2021) -- the result is
    exactly mirror-equivariant and costs two passes.

    ``z_slices``: indices along the volume's third axis whose outputs are wanted (e.g. every
    second one, for statistics that need a sample of the voxels, not every voxel: the site
    maps, :func:`phyjax.methods.calibration.pooled_outputs`); with the axial view alone only
    those slices are run (each one still sees its ``context`` neighbours, so its output is the
    one a full pass gives) and every other slice's outputs are 0; ``None``: every slice.  With
    other views every slice is run (their slices cut across the axial ones).

    Returns a dict of ``(X, Y, Z)`` arrays, one per output of ``predict``.  Raises InputError
    for an unknown ``tta`` or view, or a ``z_slices`` index outside the volume.
    """
    if isinstance(params, (list, tuple)):
        return _mean_outputs([predict_volume(predict, p, image, mask, protocol, depth,
                                             batch_size, context, tta, mirror, views, z_slices)
                              for p in params])
    n_z = np.shape(image)[2]
    if z_slices is not None:
        z_slices = np.unique(np.asarray(z_slices, int))
        if z_slices.size == 0 or z_slices[0] < 0 or z_slices[-1] >= n_z:
            raise InputError(f"z_slices must index the volume's {n_z} slices along its third "
                             f"axis; got {z_slices.tolist()}.")
    if check_tta(tta, "tta") == "flip":
        args = (predict, params)
        rest = (protocol, depth, batch_size, context, "none", 0, views)
        # the mirrored pass needs the same slices of the scan: reversed when it flips axis 2
        z_flip = None if z_slices is None else (n_z - 1 - z_slices if mirror == 2 else z_slices)
        a = predict_volume(*args, image, mask, *rest, z_slices)
        b = predict_volume(*args, np.flip(image, mirror), np.flip(mask, mirror), *rest, z_flip)
        return {k: 0.5 * (a[k] + np.flip(b[k], mirror)) for k in a}
    views = check_views(views, "views")
    if views != ("axial",):
        outs = []
        for view in views:
            out = predict_volume(predict, params, view_volume(image, view),
                                 view_volume(mask, view), protocol, depth, batch_size, context)
            outs.append({k: unview_volume(v, view) for k, v in out.items()})
        return _mean_outputs(outs)
    pads, _ = grid(image.shape, depth)
    src = with_context(to_slices(image, pads), context).astype(np.float32)
    msk = to_slices(mask.astype(np.float32), pads)[..., None]
    if z_slices is not None:
        src, msk = src[z_slices], msk[z_slices]
    n = src.shape[0]
    total = -(-n // batch_size) * batch_size
    src = np.concatenate([src, np.zeros((total - n,) + src.shape[1:], np.float32)])
    msk = np.concatenate([msk, np.zeros((total - n,) + msk.shape[1:], np.float32)])
    code = np.asarray(encode(protocol))
    code = np.broadcast_to(code, (batch_size,) + code.shape)
    outs = []
    for i in range(0, total, batch_size):
        outs.append(jax.device_get(predict(params, src[i:i + batch_size], msk[i:i + batch_size],
                                           code, float(protocol.field_strength))))
    result = {k: np.concatenate([o[k] for o in outs])[:n, ..., 0] for k in outs[0]}
    if z_slices is not None:
        for k, v in result.items():
            full = np.zeros((n_z,) + v.shape[1:], v.dtype)
            full[z_slices] = v
            result[k] = full
    return {k: from_slices(v, pads) for k, v in result.items()}


def _mean_outputs(outs: list[dict]) -> dict:
    """Output-by-output mean of several ``predict_volume`` results (ensemble members, views)."""
    return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}


def save_params(params: Any, directory: str) -> str:
    """Network parameters as one msgpack file (flax.serialization) in ``directory`` (an
    ensemble's list as ``{"0": ..., "1": ...}``)."""
    path = os.path.join(directory, "params.msgpack")
    with open(path, "wb") as f:
        f.write(flax.serialization.to_bytes(params))
    return path


def load_params(directory: str) -> Any:
    """Inverse of :func:`save_params` (a nested dict of arrays)."""
    with open(os.path.join(directory, "params.msgpack"), "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


class SliceNetworkHarmonizer(Harmonizer):
    """Trained slice-network parameters, their settings ``cfg`` (``features``, ``context``, ...)
    and the inference batch size; saved as ``params.msgpack`` + ``harmonizer.json``.

    Subclasses implement :meth:`build` (the jit-compiled ``predict(params, source, mask, code,
    B0) -> {"harmonized": ..., ...}`` on slice batches) and name their settings' JSON key.
    """

    config_key = "network"

    def __init__(self, params, cfg: dict, batch_size: int, **base):
        super().__init__(**base)
        self.params, self.cfg, self.batch_size = params, dict(cfg), int(batch_size)
        self._predict = self.build()

    @abc.abstractmethod
    def build(self) -> Callable:
        """The jit-compiled ``predict`` of this network (called once, by ``__init__``)."""

    def predict(self, volume, z_slices=None) -> dict[str, np.ndarray]:
        """Every output of the network on ``volume``, as ``(X, Y, Z)`` arrays (``z_slices``:
        only those slices along the third axis are needed, :func:`predict_volume`)."""
        return predict_volume(self._predict, self.params, volume.image, volume.mask,
                              volume.protocol, len(self.cfg["features"]), self.batch_size,
                              self.cfg["context"], *self.tta(volume), self.views(), z_slices)

    def views(self) -> tuple[str, ...]:
        """The slicing planes the network was trained on and infers in (``views`` of its
        settings; axial for a network saved before they existed)."""
        return check_views(self.cfg.get("views", ("axial",)), f"{self.config_key}.views")

    def tta(self, volume) -> tuple[str, int]:
        """``(tta, mirror axis)`` for ``volume``: the settings' ``tta`` (:data:`TTA`; ``none``
        for a network saved before it existed) and, for ``flip``, the voxel axis its affine
        names left-right.  Raises InputError when that affine cannot be had."""
        tta = check_tta(self.cfg.get("tta", "none"), f"{self.config_key}.tta")
        if tta == "none":
            return tta, 0
        try:
            affine = volume.grid_affine()
        except Exception as e:          # no affine given and no readable file behind it
            raise InputError(f"{volume.path}: tta=flip needs the scan's affine to find its "
                             f"left-right axis; none could be read ({e}).") from e
        return tta, mirror_axis(affine)

    def calibrate(self, out: dict, volume, z_slices=None) -> dict:
        """``out`` (this network's outputs on ``volume``) through its settings' ``calibrate``
        (:func:`phyjax.methods.calibration.calibrate_output`; ``none`` for a network saved
        before it existed), with its site maps, if any, chosen by ``volume``'s protocol.
        ``z_slices`` (outputs only on those slices, :meth:`predict`): InputError for ``p99``
        and ``match``, which take their statistics from every slice."""
        calibrate = self.cfg.get("calibrate", "none")
        if z_slices is not None and calibrate in ("p99", "match"):
            raise InputError(f"calibrate={calibrate!r} takes its statistics from the whole "
                             "scan; it cannot calibrate outputs on some slices only.")
        return calibrate_output(out, volume.mask, calibrate,
                                source=volume.image, site_maps=self.cfg.get("site_maps"),
                                protocol=volume.protocol,
                                where=getattr(volume, "path", None) or "the source scan")

    def harmonize(self, volume, z_slices=None) -> np.ndarray:
        """The harmonized image of ``volume`` (``z_slices``: see :meth:`predict`; the other
        slices are then 0)."""
        return self.image_of(volume, self.predict(volume, z_slices=z_slices), z_slices)

    @staticmethod
    def image_of(volume, outputs: dict, z_slices=None) -> np.ndarray:
        """The harmonized image of :meth:`predict`'s ``outputs`` on ``volume``: float32, 0
        outside its mask (what :meth:`harmonize` returns) and, given ``z_slices``, outside
        those slices along the third axis."""
        return np.where(slice_mask(volume.mask, z_slices), outputs["harmonized"],
                        0.0).astype(np.float32)

    def save_state(self, directory: str) -> dict:
        save_params(self.params, directory)
        return {self.config_key: self.cfg, "batch_size": self.batch_size}

    @classmethod
    def load_state(cls, directory: str, meta: dict) -> "SliceNetworkHarmonizer":
        cfg, params = meta["state"][cls.config_key], load_params(directory)
        n = check_ensemble(cfg.get("ensemble", 1), f"{cls.config_key}.ensemble")
        if n > 1:
            params = [params[str(k)] for k in range(n)]
        return cls(params, cfg, meta["state"]["batch_size"], **base_fields(meta))
