"""Soft-Dice training of the segmentation U-Net, whole-volume inference, saving and loading."""

from __future__ import annotations

import itertools
import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from phyjax.data.nifti import InputError
from phyjax.data.slices import from_slices, grid, to_slices, with_context
from phyjax.segment.model import (
    FAMILY_SLICE,
    LEGACY_PHYSICS_SIZE,
    PHYSICS_SIZE,
    SegmentationUNet,
    extended_vector,
)
from phyjax.train import loop


def soft_dice_loss(probs, target, mask, eps: float = 1e-6):
    """``1 - mean_c Dice_c`` with the soft Dice of Milletari et al. (V-Net, 3DV 2016, Eq. 1)
    per class over the whole batch: ``Dice_c = 2 sum(p y) / (sum(p) + sum(y))`` (the squared
    denominator of V-Net replaced by the plain sums, as in Sudre et al.'s generalised Dice,
    DLMIA 2017, without class weights).

    Args: ``probs``, ``target`` ``(B, ..., C)`` probabilities; ``mask`` ``(B, ..., 1)`` (voxels
      outside it do not count).  Returns a scalar in [0, 1].
    """
    p, y = probs * mask, target * mask
    axes = tuple(range(p.ndim - 1))
    dice = (2.0 * jnp.sum(p * y, axes) + eps) / (jnp.sum(p, axes) + jnp.sum(y, axes) + eps)
    return 1.0 - jnp.mean(dice)


def soft_cross_entropy(logits, target, mask):
    """Mean over voxels inside ``mask`` of ``-sum_c y_c log softmax(logits)_c`` (soft targets).

    Unlike the soft Dice, whose optimal prediction for a partial-volume voxel depends on how well
    the rest of the batch is segmented (including a voxel raises a class's Dice iff its target
    exceeds Dice / 2), cross-entropy is minimised by the posterior itself, so the soft volume
    ``sum p`` of a well-trained network is unbiased whatever the contrast of the protocol.

    Args: ``logits``, ``target`` ``(B, ..., C)``; ``mask`` ``(B, ..., 1)``.  Returns a scalar.
    """
    ce = -jnp.sum(target * jax.nn.log_softmax(logits), axis=-1, keepdims=True)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


#: Training losses of :func:`train` (``config.train.loss``).
LOSSES = ("dice", "ce", "dice_ce")


def segmentation_loss(name: str, logits, target, mask):
    """``dice`` (Borges et al.: soft Dice), ``ce`` (soft cross-entropy) or ``dice_ce`` (their
    sum).  Raises ValueError for another name."""
    if name not in LOSSES:
        raise ValueError(f"loss {name!r}; expected one of {LOSSES}.")
    loss = 0.0
    if name in ("dice", "dice_ce"):
        loss = loss + soft_dice_loss(jax.nn.softmax(logits), target, mask)
    if name in ("ce", "dice_ce"):
        loss = loss + soft_cross_entropy(logits, target, mask)
    return loss


def protocol_consistency(probs, mask):
    """Disagreement of the two halves of a paired batch: the mean over voxels inside ``mask``
    (of the first half) of ``sum_c (p_c - p'_c)^2``, where sample ``j`` and ``j + B/2`` show
    one anatomy under two protocols (:meth:`phyjax.segment.simulate.SliceBank.batch` with
    ``paired``).  Zero iff the segmentation does not depend on the protocol there; it
    penalises every protocol-dependent difference, the subject x protocol part that the
    supervised loss leaves free (both halves' errors may be small yet different) included.
    The per-voxel squared difference of two predictions of one input under two perturbations
    is the Pi-model's consistency term (Laine & Aila, "Temporal ensembling for
    semi-supervised learning", ICLR 2017, Algorithm 1); here the perturbation is the
    acquisition.

    Args: ``probs`` ``(B, ..., C)`` with ``B`` even; ``mask`` ``(B, ..., 1)``.  Returns a
    scalar in [0, 2].
    """
    h = probs.shape[0] // 2
    d = jnp.sum((probs[:h] - probs[h:2 * h]) ** 2, axis=-1, keepdims=True)
    m = mask[:h]
    return jnp.sum(d * m) / jnp.maximum(jnp.sum(m), 1.0)


def make_model(settings: dict) -> SegmentationUNet:
    """The :class:`SegmentationUNet` of a settings dict (``features``, ``physics``,
    ``branch_width``; optional ``conditioning`` (default ``"add"``), ``condition_encoder``
    (False), ``param_mean`` / ``param_std`` (none), ``contrast`` (``"signed"``; or
    ``"magnitude"``: absolute contrast features), ``physics_size`` (the physics-vector entries
    the branch reads; :data:`~phyjax.segment.model.LEGACY_PHYSICS_SIZE`, no readout train, when
    absent), ``b1_input`` (False: the branch is not told B1+) and ``ndim`` (2: slices; 3: a
    3-D U-Net on cubes) -- models saved before these existed load as they were trained)."""
    return SegmentationUNet(features=tuple(settings["features"]), n_classes=3,
                            physics=bool(settings["physics"]),
                            branch_width=int(settings["branch_width"]),
                            conditioning=str(settings.get("conditioning", "add")),
                            condition_encoder=bool(settings.get("condition_encoder", False)),
                            param_mean=tuple(float(v) for v in settings.get("param_mean", ())),
                            param_std=tuple(float(v) for v in settings.get("param_std", ())),
                            contrast_magnitude=settings.get("contrast", "signed") == "magnitude",
                            physics_size=int(settings.get("physics_size", LEGACY_PHYSICS_SIZE)),
                            b1_input=bool(settings.get("b1_input", False)),
                            ndim=int(settings.get("ndim", 2)))


def parameter_statistics(params: np.ndarray, by_family: bool = True, floor: float = 1e-3,
                         magnitude: bool = False) -> tuple[list, list]:
    """Standardization of physics vectors ``(N, PHYSICS_SIZE)`` for the branch: flattened
    mean and sd (floored at ``floor``, so constant entries pass through centred) of their
    :func:`~phyjax.segment.model.extended_vector` (the vector and its contrast features, of
    magnitude images if ``magnitude``), rows of ``EXTENDED_SIZE``.

    ``by_family``: one row per family of :data:`~phyjax.physics.sequences.SEQUENCES` (the
    statistics of that family's rows; the global ones for a family absent from ``params``),
    so that a parameter's spread *within* a family reaches the branch at unit scale (pooled
    over MPRAGE and SPGR, the SPGR TR span of 15-100 ms is 0.07 sd of a TR that also holds
    MPRAGE's 2.4 s).  The one-hot family itself is left as it is (mean 0, sd 1).
    """
    params = np.asarray(extended_vector(np.asarray(params, np.float32), magnitude), np.float64)
    onehot = params[:, FAMILY_SLICE]
    glob = params.mean(0), np.maximum(params.std(0), floor)
    rows = []
    for k in range(onehot.shape[1] if by_family else 0):
        mine = params[onehot[:, k] > 0.5]
        rows.append((mine.mean(0), np.maximum(mine.std(0), floor)) if len(mine) else glob)
    rows = rows or [glob]
    mean, std = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    mean[:, FAMILY_SLICE], std[:, FAMILY_SLICE] = 0.0, 1.0
    return mean.ravel().tolist(), std.ravel().tolist()


def init_params(model: SegmentationUNet, shape_hw, channels: int, seed: int):
    x = jnp.zeros((1, *shape_hw, channels), jnp.float32)
    return model.init(jax.random.key(seed), x, jnp.zeros((1, PHYSICS_SIZE), jnp.float32))


def train(model: SegmentationUNet, bank, t, workdir: str, seed: int, progress: bool = True,
          desc: str = "train", patch: int = 0):
    """Train ``model`` on ``bank`` (:class:`phyjax.segment.simulate.SliceBank`) with the loss
    ``t.loss`` (:func:`segmentation_loss`; default soft Dice) and Adam (cosine-decayed learning rate
    ``t.learning_rate`` over ``t.steps``), the standardized physics vector jittered by
    ``t.param_noise`` times a standard normal (0: none); a branch told B1+
    (``model.b1_input``) gets each slice's B1+ map for a fraction ``t.b1_known`` of the
    samples and "unknown" for the rest (:meth:`~phyjax.segment.simulate.SliceBank.batch`);
    resumable (:func:`phyjax.train.loop.fit`: Orbax checkpoints, ``train_log.csv`` in
    ``workdir``).  ``t.consistency`` > 0 (default 0) trains on paired batches, half the slices
    under a second protocol of their family, and adds that weight times
    :func:`protocol_consistency` to the loss.  ``patch`` > 0 trains on ``patch`` x ``patch``
    windows of the slices (:meth:`~phyjax.segment.simulate.SliceBank.batch`), for a
    :class:`Segmenter` whose settings hold the same ``patch``; a 3-D ``model`` (``ndim`` 3)
    trains on ``patch``-voxel cubes of the volumes instead (one input channel: no slice
    context), for a :class:`Segmenter` with ``ndim`` 3.  ``t.branch_dropout`` (default
    0; must be in [0, 1)) zeroes the branch's features of each training sample with that
    probability (``branch_keep`` of :class:`~phyjax.segment.model.SegmentationUNet`, drawn from
    (seed, step)), for a :class:`Segmenter` whose settings hold it (:attr:`Segmenter.averaged`).
    Returns the trained variables."""
    consistency = float(t.get("consistency", 0.0))
    if not consistency >= 0:
        raise ValueError(f"train.consistency {consistency} must be >= 0.")
    patch, ndim = int(patch), int(model.ndim)
    factor = 2 ** (len(model.features) - 1)
    if patch < 0 or patch % factor or patch > min(bank.padded):
        raise ValueError(f"model.patch {patch}: must be 0 (whole slices) or a multiple of "
                         f"{factor} no larger than the slices ({bank.padded[0]} x "
                         f"{bank.padded[1]}).")
    if ndim == 3 and not 0 < patch <= bank.images.shape[1]:
        raise ValueError(f"model.patch {patch}: a 3-D U-Net trains on cubes, so the patch must "
                         f"be > 0 and no larger than the volumes' {bank.images.shape[1]} "
                         "slices.")
    if ndim == 3:
        variables = init_params(model, (patch,) * 3, 1, seed)
    else:
        variables = init_params(model, (patch, patch) if patch else bank.padded,
                                2 * bank.context + 1, seed)
    schedule = optax.cosine_decay_schedule(t.learning_rate, max(int(t.steps), 1), alpha=0.05)
    tx = optax.adam(schedule)

    sigma = float(t.get("param_noise", 0.0))
    b1_known = float(t.get("b1_known", 0.5)) if model.b1_input else 0.0
    dropout = float(t.get("branch_dropout", 0.0)) if model.physics else 0.0
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"train.branch_dropout {dropout}: must be in [0, 1).")

    def loss_fn(params, batch):
        noise = sigma * batch["noise"] if sigma > 0 else None
        b1 = batch["b1"] if model.b1_input else None
        logits = model.apply(params, batch["x"], batch["params"], noise, b1,
                             batch.get("keep"))
        loss = segmentation_loss(t.get("loss", "dice"), logits, batch["y"], batch["mask"])
        if not consistency:
            return loss, {"loss": loss}
        agree = protocol_consistency(jax.nn.softmax(logits), batch["mask"])
        return loss + consistency * agree, {"loss": loss, "consistency": agree}

    step = loop.make_train_step(loss_fn, tx)
    state = loop.TrainState.create(variables, tx)
    def batch(i):
        b = bank.batch(i, t.batch_size, seed, b1_known, paired=consistency > 0, patch=patch,
                       ndim=ndim)
        if not model.b1_input:
            del b["b1"]
        if dropout:   # per sample, from (seed, step): a resumed run draws the same
            rng = np.random.default_rng([seed, i, 0xD0])
            b["keep"] = (rng.random(len(b["x"])) >= dropout).astype(np.float32)
        return (b,)

    state = loop.fit(state, step, batch, t.steps,
                     workdir,
                     checkpoint_every=t.checkpoint_every, log_every=t.log_every,
                     progress=progress, desc=desc)
    return state.params


def tile_starts(size: int, patch: int) -> np.ndarray:
    """Start indices of ``patch``-long windows covering ``range(size)`` with stride ``patch //
    2`` (the last window ends at ``size``).  Raises ValueError when ``patch > size``."""
    if not 0 < patch <= size:
        raise ValueError(f"a window of {patch} does not fit {size}.")
    starts = list(range(0, size - patch + 1, max(patch // 2, 1)))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return np.asarray(starts, int)


def _sliding_windows(run, x: np.ndarray, b1: np.ndarray | None, patch: int,
                     lead: int) -> np.ndarray:
    """The sliding-window average behind :func:`tiled` and :func:`tiled_volume`: ``x`` ``(Z,
    H, W, C)`` has ``lead`` leading batch axes (1: slices, windowed in plane; 0: one volume,
    windowed in 3-D) and ``3 - lead`` spatial ones, each covered by ``patch``-long windows
    (:func:`tile_starts`, half-window overlap; axes shorter than the window zero-padded, ``b1``
    ``(Z, H, W)`` with NaN, and cropped back).  ``run`` gets every window of every batch entry
    at once, ``(N, P, ..., C)``, corner by corner, and the outputs ``(N, P, ..., K)`` are
    averaged where windows overlap (uniform weights, as MONAI's ``sliding_window_inference``
    with ``mode="constant"``).  Returns ``(Z, H, W, K)``."""
    shape = x.shape[:3]
    pad = [(0, 0)] * lead + [(0, max(patch - n, 0)) for n in shape[lead:]]
    if any(p for _, p in pad):
        x = np.pad(x, pad + [(0, 0)])
        if b1 is not None:
            b1 = np.pad(b1, pad, constant_values=np.nan)
    batch = x.shape[:lead]
    n = int(np.prod(batch))
    corners = list(itertools.product(*(tile_starts(m, patch) for m in x.shape[lead:3])))

    def cut(arr, corner):   # (n, P, ..., [C]): this window of every batch entry
        window = arr[(slice(None),) * lead + tuple(slice(c, c + patch) for c in corner)]
        return window.reshape((n,) + window.shape[lead:])

    out = np.asarray(run(np.concatenate([cut(x, c) for c in corners]),
                         None if b1 is None else np.concatenate([cut(b1, c) for c in corners])))
    acc = np.zeros(x.shape[:3] + out.shape[-1:], np.float32)
    count = np.zeros(x.shape[lead:3] + (1,), np.float32)   # windows per voxel: same per entry
    for j, corner in enumerate(corners):
        window = (slice(None),) * lead + tuple(slice(c, c + patch) for c in corner)
        acc[window] += out[j * n:(j + 1) * n].reshape(batch + out.shape[1:])
        count[window[lead:]] += 1.0
    return (acc / count)[:shape[0], :shape[1], :shape[2]]


def tiled(run, x: np.ndarray, b1: np.ndarray | None, patch: int) -> np.ndarray:
    """Sliding-window inference: ``run(tiles, b1_tiles)`` (``(N, P, P, C)`` -> ``(N, P, P,
    K)``) over every ``patch`` x ``patch`` window of slices ``x`` ``(Z, H, W, C)``
    (:func:`tile_starts`, half-window overlap), the windows' outputs averaged where they
    overlap (uniform weights, as MONAI's ``sliding_window_inference`` with ``mode="constant"``).
    Slices smaller than the window are zero-padded to it (``b1`` with NaN) and cropped back.
    Returns ``(Z, H, W, K)``."""
    return _sliding_windows(run, x, b1, patch, lead=1)


def tiled_volume(run, x: np.ndarray, b1: np.ndarray | None, patch: int) -> np.ndarray:
    """Sliding-window inference in 3-D: ``run(cubes, b1_cubes)`` (``(N, P, P, P, C)`` ->
    ``(N, P, P, P, K)``) over every ``patch``-voxel cube of a volume ``x`` ``(Z, H, W, C)``
    (:func:`tile_starts` along each axis, half-window overlap), the cubes' outputs averaged
    where they overlap (uniform weights, as MONAI's ``sliding_window_inference`` with
    ``mode="constant"``).  Axes shorter than the cube are zero-padded to it (``b1``, ``(Z, H,
    W)``, with NaN) and cropped back.  Returns ``(Z, H, W, K)``."""
    return _sliding_windows(run, x, b1, patch, lead=0)


class Segmenter:
    """A trained U-Net with what inference needs: ``settings`` (model, ``context``, ``depth``,
    ``voxel_mm``, ``ranges`` trained on; ``patch`` > 0 for a U-Net trained on windows of that
    size, run window by window: :func:`tiled`) and ``variables``."""

    def __init__(self, settings: dict, variables):
        self.settings, self.variables = settings, variables
        self.model = make_model(settings)
        model = self.model

        def apply(v, x, p, b1):
            probs = jax.nn.softmax(model.apply(v, x, p, None, b1))
            if not self.averaged:
                return probs
            off = jnp.zeros(x.shape[:1], jnp.float32)
            return 0.5 * (probs + jax.nn.softmax(model.apply(v, x, p, None, b1, off)))

        self._apply = jax.jit(apply)

    @property
    def averaged(self) -> bool:
        """Whether the probabilities are the mean of the branch-on and branch-off passes (a
        physics U-Net trained with branch dropout, ``settings["branch_dropout"]`` > 0)."""
        return self.physics and float(self.settings.get("branch_dropout", 0.0)) > 0

    @property
    def ndim(self) -> int:
        """2: a U-Net on (windows of) slices; 3: on cubes of the volume (``settings["ndim"]``)."""
        return int(self.settings.get("ndim", 2))

    @property
    def physics(self) -> bool:
        return bool(self.settings["physics"])

    @property
    def b1_input(self) -> bool:
        """Whether the branch reads a B1+ map (:attr:`SegmentationUNet.b1_input`)."""
        return self.physics and bool(self.settings.get("b1_input", False))

    def predict(self, image: np.ndarray, mask: np.ndarray, params: np.ndarray | None,
                batch_size: int = 32, b1: np.ndarray | None = None) -> np.ndarray:
        """Tissue probabilities ``(X, Y, Z, 3)`` (CSF, GM, WM; 0 outside ``mask``) of a
        normalized image ``(X, Y, Z)``, slice by slice; ``params``: the physics vector
        ``(PHYSICS_SIZE,)`` of its protocol (ignored without the branch; required with it);
        ``b1``: the relative B1+ map ``(X, Y, Z)`` on the image's grid (1 = nominal; NaN where
        unknown), read only by a branch told B1+ (:attr:`b1_input`; ``None``: unknown).
        A U-Net trained on windows (``settings["patch"]`` > 0) runs window by window
        (:func:`tiled`), a 3-D one (``settings["ndim"]`` 3) cube by cube
        (:func:`tiled_volume`).  Raises InputError for a missing ``params`` or a ``b1`` of another
        shape."""
        if self.physics and params is None:
            raise InputError("the physics U-Net needs the image's acquisition parameters.")
        if b1 is not None and np.shape(b1) != np.shape(image):
            raise InputError(f"B1+ map of shape {np.shape(b1)}; the image has "
                             f"{np.shape(image)} (resample it to the image first).")
        mask = np.asarray(mask, bool)
        pads, _ = grid(image.shape, len(self.settings["features"]))
        slices = to_slices(np.where(mask, image, 0.0), pads)
        x = slices[..., None] if self.ndim == 3 else with_context(slices,
                                                                  self.settings["context"])
        b1_slices = None
        if self.b1_input:
            vol = np.full(image.shape, np.nan, np.float32) if b1 is None else b1
            b1_slices = to_slices(np.asarray(vol, np.float32), pads, np.nan)
        patch = int(self.settings.get("patch", 0))
        if patch:   # as many voxels per call as whole slices would give
            batch_size = (max(1, batch_size * x.shape[1] * x.shape[2] // patch ** 3)
                          if self.ndim == 3 else
                          batch_size * max(1, (x.shape[1] * x.shape[2]) // (patch * patch)))
        p = np.zeros((batch_size, PHYSICS_SIZE), np.float32)
        if params is not None:
            p[:] = np.asarray(params, np.float32)

        def run(x, b1_slices):
            out = []
            for i in range(0, len(x), batch_size):
                chunk = x[i:i + batch_size]
                n = len(chunk)
                b = None if b1_slices is None else b1_slices[i:i + batch_size]
                if n < batch_size:  # one compiled shape
                    chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]),
                                                            chunk.dtype)])
                    if b is not None:
                        b = np.concatenate([b, np.full((batch_size - n, *b.shape[1:]), np.nan,
                                                       b.dtype)])
                out.append(np.asarray(self._apply(
                    self.variables, jnp.asarray(chunk, jnp.float32), p,
                    None if b is None else jnp.asarray(b)))[:n])
            return np.concatenate(out)

        if self.ndim == 3:
            probs = tiled_volume(run, x, b1_slices, patch)
        else:
            probs = (tiled(run, x, b1_slices, patch) if patch
                     else run(x, b1_slices))                # (Z, H', W', 3)
        vol = np.stack([from_slices(probs[..., c], pads) for c in range(3)], -1)
        return np.where(mask[..., None], vol, 0.0).astype(np.float32)

    def save(self, directory: str) -> str:
        """Write ``settings.json`` and ``variables.msgpack`` (flax serialization) to
        ``directory``; returns it."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "settings.json"), "w") as f:
            json.dump(self.settings, f, indent=2)
        tmp = os.path.join(directory, "variables.msgpack.tmp")
        with open(tmp, "wb") as f:
            f.write(flax.serialization.to_bytes(self.variables))
        os.replace(tmp, os.path.join(directory, "variables.msgpack"))
        return directory

    @classmethod
    def load(cls, directory: str) -> Segmenter:
        """The segmenter :meth:`save` wrote.  Raises InputError naming the folder when it is not
        one."""
        paths = [os.path.join(directory, n) for n in ("settings.json", "variables.msgpack")]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise InputError(f"{directory}: not a saved physics_seg segmenter (missing "
                             f"{', '.join(os.path.basename(p) for p in missing)}).")
        with open(paths[0]) as f:
            settings = json.load(f)
        model = make_model(settings)
        factor = 2 ** (len(settings["features"]) - 1)
        if int(settings.get("ndim", 2)) == 3:
            x = jnp.zeros((1, factor, factor, factor, 1), jnp.float32)
        else:
            x = jnp.zeros((1, factor, factor, 2 * settings["context"] + 1), jnp.float32)
        # structure only (no PRNG work): from_bytes fills it with the saved arrays
        template = jax.eval_shape(model.init, jax.random.key(0), x,
                                  jnp.zeros((1, PHYSICS_SIZE), jnp.float32))
        with open(paths[1], "rb") as f:
            variables = flax.serialization.from_bytes(template, f.read())
        return cls(settings, variables)
