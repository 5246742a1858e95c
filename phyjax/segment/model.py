"""Segmentation U-Net with an optional physics branch (Borges et al. 2019).

Borges, Sudre, Varsavsky, Thomas, Drobnjak, Ourselin, Cardoso, "Physics-informed brain MRI
segmentation", SASHIMI 2019 (arXiv:2001.10767), their network figure: the acquisition parameters of
the input image, together with their negative exponentials (the signal equations depend on the
parameters through ``exp(-TI/T1)``, ``exp(-TR/T1)``, ``exp(-TE/T2*)``), go through two fully
connected layers; the result is broadcast over space and joins the decoder's feature maps, so the
network can undo the protocol's effect on contrast. Here it is *added* (a per-channel bias, one
dense projection per decoder level) -- the same information as concatenation of a tiled vector
followed by a convolution, with fewer parameters.

The network is written once for 2-D slices ``(B, H, W, C)`` and 3-D patches ``(B, X, Y, Z, C)``
(``ndim``); the CPU configs use 2-D.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from phyjax.physics import signal, tissues
from phyjax.physics.sequences import SEQUENCES, Protocol, encode

#: Tissue T1 (s) at 3 T (WM, GM, CSF; :mod:`phyjax.physics.tissues`) whose ``exp(-TR/T1)`` and
#: ``exp(-TI/T1)`` the physics branch is given, and T2* (WM, GM) for ``exp(-TE/T2*)``.
_T1_REF = tuple(tissues.tissue_parameters(3.0)[t].t1 for t in ("wm", "gm", "csf"))
_T2S_REF = tuple(tissues.tissue_parameters(3.0)[t].t2star for t in ("wm", "gm"))

#: Length of :func:`physics_vector` before it carried the MPRAGE readout train (models saved
#: then have no ``physics_size`` setting and read only these entries).
LEGACY_PHYSICS_SIZE = 10 + 2 * len(_T1_REF) + len(_T2S_REF) + 2
#: Where :func:`physics_vector` holds the MPRAGE readout train: ``100 tr_readout`` (s) and
#: ``n_readouts / 256`` (0 for other families or when unknown).
READOUT_SLICE = slice(LEGACY_PHYSICS_SIZE, LEGACY_PHYSICS_SIZE + 2)
#: Length of :func:`physics_vector`.
PHYSICS_SIZE = READOUT_SLICE.stop
#: Where :func:`physics_vector` holds the one-hot family (:data:`SEQUENCES` order).
FAMILY_SLICE = slice(5, 5 + len(SEQUENCES))
#: Where :func:`physics_vector` holds the flip angle (rad; an MPRAGE's readout flip), and its
#: sine and cosine: the entries a transmit field B1+ changes (:func:`scale_flip`).
FLIP_INDEX = 3
SINCOS_SLICE = slice(LEGACY_PHYSICS_SIZE - 2, LEGACY_PHYSICS_SIZE)
#: Reference tissues (WM, GM, CSF at 3 T) of :func:`contrast_features`.
_TISSUES_REF = tuple(tissues.tissue_parameters(3.0)[t] for t in ("wm", "gm", "csf"))
#: Length of :func:`contrast_features`; :func:`extended_vector` is ``PHYSICS_SIZE + CONTRAST_SIZE``.
CONTRAST_SIZE = len(_TISSUES_REF)
EXTENDED_SIZE = PHYSICS_SIZE + CONTRAST_SIZE


def physics_vector(protocol: Protocol) -> np.ndarray:
    """The physics branch's input for one protocol, shape ``(PHYSICS_SIZE,)`` float32.

    ``[encode(protocol) (10: tr, ti, 10 te, flip angle (rad), B0 / 3 T, one-hot family),
    exp(-TR/T1_k) (k = WM, GM, CSF at 3 T), exp(-TI/T1_k) (0 without inversion),
    exp(-TE/T2*_k) (k = WM, GM), sin(flip), cos(flip), 100 tr_readout, n_readouts / 256]``;
    times in s.  The exponentials are Borges et al. (2019)'s "negative exponentials" of the
    parameters, taken at the tissue relaxation times so that they span (0, 1) over the protocol
    ranges.  The last two (:data:`READOUT_SLICE`) are an MPRAGE's readout train (readout TR, i.e.
    echo spacing, and readouts per shot; 0 for other families and when unknown); for an MPRAGE
    the flip angle is the readout flip.
    """
    p = protocol
    tr, ti, te, fa = (float(p.tr), float(p.ti), float(p.te), float(p.flip_angle))
    mprage = p.sequence == "mprage"
    exps = ([np.exp(-tr / t) for t in _T1_REF]
            + [np.exp(-ti / t) if ti > 0 else 0.0 for t in _T1_REF]
            + [np.exp(-te / t) for t in _T2S_REF] + [np.sin(fa), np.cos(fa)]
            + [100.0 * float(p.tr_readout) if mprage else 0.0,
               float(p.n_readouts) / 256.0 if mprage else 0.0])
    return np.concatenate([np.asarray(encode(p), np.float32),
                           np.asarray(exps, np.float32)]).astype(np.float32)


def contrast_features(params, magnitude: bool = False):
    """The contrast a protocol gives: the noise-free signed signal of WM, GM and CSF (3 T
    reference T1, T2*, PD of :mod:`phyjax.physics.tissues`) divided by the largest magnitude of
    the three, shape ``(..., CONTRAST_SIZE)``, from :func:`physics_vector` rows ``(...,
    PHYSICS_SIZE)`` (jnp or numpy).  ``magnitude``: the absolute values instead -- the contrast
    a magnitude image shows (they differ only where a tissue's MPRAGE signal is negative, i.e.
    before its inversion null; SPGR signals are positive).

    SPGR rows use :func:`phyjax.physics.signal.spgr` at their TR, TE and flip angle.  MPRAGE rows
    with a readout train (readout TR, readouts per shot and flip > 0,
    :func:`phyjax.physics.signal.has_readout`) use its full form
    (:func:`phyjax.physics.signal.mprage_readout`, Deichmann et al. 2000: the k-space centre in
    the middle of the train, inversion efficiency 0.96), the equation the training images are
    simulated with; those without one (and legacy-width rows) the static equation
    (:func:`phyjax.physics.signal.mprage`) at their TR, TI and TE -- as
    :func:`phyjax.physics.signal.signed_signal` chooses.  Rows of other families are zero.  The
    images are divided by their 99th percentile, so what the protocol fixes in them is these
    ratios: protocols of equal contrast map to equal features,
    whatever TR, TE and flip angle gave it (e.g. SPGR's GM/WM ratio spans 0.69-0.995 over the
    3-D range of Borges et al., a 1-D manifold in place of a 3-D box).
    """
    p = jnp.asarray(params, jnp.float32)
    tr, ti, te, fa = p[..., 0:1], p[..., 1:2], p[..., 2:3] / 10.0, p[..., 3:4]
    t1, t2s, pd = (jnp.asarray([getattr(t, k) for t in _TISSUES_REF], jnp.float32)
                   for k in ("t1", "t2star", "pd"))
    onehot = p[..., FAMILY_SLICE]
    spgr = signal.spgr(t1, t2s, pd, jnp.maximum(tr, 1e-4), te, fa)
    mprage = signal.mprage(t1, t2s, pd, jnp.maximum(tr, 1e-4), ti, te)
    if p.shape[-1] >= PHYSICS_SIZE:
        tr_ro = p[..., READOUT_SLICE.start:READOUT_SLICE.start + 1] / 100.0
        n_ro = p[..., READOUT_SLICE.start + 1:READOUT_SLICE.stop] * 256.0
        known = signal.has_readout(Protocol(tr=tr, te=te, ti=ti, flip_angle=fa,
                                            tr_readout=tr_ro, n_readouts=n_ro))
        safe = lambda v, d: jnp.where(known, v, d)
        full = signal.mprage_readout(t1, t2s, pd, jnp.maximum(tr, 1e-4), ti, te,
                                     safe(fa, 0.1), safe(tr_ro, 1e-3), safe(n_ro, 2.0))
        mprage = jnp.where(known, full, mprage)
    s = (onehot[..., SEQUENCES.index("spgr"), None] * spgr
         + onehot[..., SEQUENCES.index("mprage"), None] * mprage)
    s = jnp.abs(s) if magnitude else s
    return s / jnp.maximum(jnp.max(jnp.abs(s), axis=-1, keepdims=True), 1e-6)


def scale_flip(params, b1):
    """Physics vectors whose flip angle is the one the tissue sees under the transmit field
    ``b1``: the flip (:data:`FLIP_INDEX`) times ``b1``, its sine and cosine
    (:data:`SINCOS_SLICE`) recomputed; every other entry unchanged.

    The signal equations take B1+ as a scale of the (readout) flip angle, ``alpha = b1 a``
    (:func:`phyjax.physics.signal.spgr`, :func:`phyjax.physics.signal.mprage_readout`; the
    MPRAGE inversion is left as is, as in the simulator), so a protocol seen through B1+ is the
    same protocol with that flip, and :func:`contrast_features` of the result is the contrast
    the tissue under that B1+ shows.

    Args:
      params: ``(B, P)`` :func:`physics_vector` rows (P >= :data:`LEGACY_PHYSICS_SIZE`).
      b1: ``(B, *spatial)`` relative B1+ (1 = nominal), finite.
    Returns ``(B, *spatial, P)`` (jnp).
    """
    p = jnp.asarray(params, jnp.float32)
    b1 = jnp.asarray(b1, jnp.float32)
    p = jnp.broadcast_to(p.reshape(p.shape[:1] + (1,) * (b1.ndim - 1) + p.shape[1:]),
                         b1.shape + p.shape[-1:])
    fa = p[..., FLIP_INDEX] * b1
    return (p.at[..., FLIP_INDEX].set(fa).at[..., SINCOS_SLICE.start].set(jnp.sin(fa))
            .at[..., SINCOS_SLICE.start + 1].set(jnp.cos(fa)))


def extended_vector(params, magnitude: bool = False):
    """``[physics vector, contrast_features(magnitude)]``, shape ``(..., EXTENDED_SIZE)``
    (jnp)."""
    p = jnp.asarray(params, jnp.float32)
    return jnp.concatenate([p, contrast_features(p, magnitude)], axis=-1)


class ConvBlock(nn.Module):
    """Two (3x3[x3] conv, GroupNorm, ReLU), optionally conditioned on the physics branch.

    ``cond`` (``None`` without the branch) is ``(scale, shift)``, each ``(B, k, features)`` (k = 1:
    the first conv only; k = 2: both), ``(B, k, *spatial, features)`` (a branch that varies over
    space: one told a B1+ map) or ``None``, broadcast over space and applied right after
    GroupNorm ``i < k`` as ``x * (1 + scale[:, i]) + shift[:, i]`` -- after the norm, which would
    cancel a spatially constant shift or scale. ``shift`` alone on the first conv is the paper's
    additive broadcast; ``scale`` and ``shift`` on both is FiLM (Perez et al., AAAI 2018, Eq. 1).
    """

    features: int
    ndim: int = 2

    @nn.compact
    def __call__(self, x, cond=None):
        groups = min(4, self.features)
        scale, shift = cond if cond is not None else (None, None)
        space = (1,) * self.ndim
        for i in range(2):
            x = nn.GroupNorm(num_groups=groups)(nn.Conv(self.features, (3,) * self.ndim)(x))
            if scale is not None and i < scale.shape[1]:
                s = scale[:, i]
                x = x * (1.0 + (s.reshape(s.shape[:1] + space + s.shape[1:]) if s.ndim == 2
                                else s))
            if shift is not None and i < shift.shape[1]:
                b = shift[:, i]
                x = x + (b.reshape(b.shape[:1] + space + b.shape[1:]) if b.ndim == 2 else b)
            x = nn.relu(x)
        return x


#: How the physics branch enters the U-Net (:class:`SegmentationUNet`): a mode, ``add`` or
#: ``film``, then optional ``+``-joined options: ``zero`` (``add``'s projections start at zero,
#: so the branch starts as a no-op, as FiLM's always do), ``contrast`` (the branch reads
#: :func:`contrast_features` and the one-hot family instead of the parameters and their
#: exponentials) or ``both`` (the parameters, their exponentials and the contrast features).
CONDITIONING_MODES = ("add", "film")
CONDITIONING_OPTIONS = ("zero", "contrast", "both")
CONDITIONINGS = tuple(
    "+".join((mode,) + tuple(o for o in opts if o))
    for mode in CONDITIONING_MODES for opts in
    ((i, z) for i in ("", "contrast", "both") for z in ("", "zero"))
    if not (mode == "film" and opts[1]))


def parse_conditioning(conditioning: str) -> tuple[str, str, bool]:
    """``(mode, inputs, zero_init)`` of a :data:`CONDITIONINGS` string; ``inputs`` is
    ``"parameters"`` (Borges et al.), ``"contrast"`` or ``"both"``.  Raises ValueError for
    another string."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning {conditioning!r}; expected one of {CONDITIONINGS}.")
    mode, *opts = conditioning.split("+")
    inputs = next((o for o in opts if o in ("contrast", "both")), "parameters")
    return mode, inputs, mode == "film" or "zero" in opts


class SegmentationUNet(nn.Module):
    """U-Net ``(B, *spatial, C_in)[, (B, PHYSICS_SIZE)] -> (B, *spatial, n_classes)`` logits.

    Attributes:
      features: channels per level, e.g. ``(16, 32, 64)``; the spatial sizes must be divisible
        by ``2 ** (len(features) - 1)``.
      n_classes: output classes (CSF, GM, WM: 3).
      physics: whether the physics branch exists.  With it, ``__call__`` needs ``params``
        (``(B, P)``, :func:`physics_vector` rows): two dense layers of width ``branch_width``
        (ReLU), then one dense projection per conditioned block.  Without it, ``params`` is
        ignored (the "same U-Net without the branch").
      branch_width: width of the branch's two dense layers.
      ndim: 2 (slices) or 3 (volumes).
      conditioning: ``"add"`` -- Borges et al.'s broadcast into the decoder: a per-channel shift
        added after the first GroupNorm of each decoder block; ``"film"`` -- FiLM (Perez et
        al., AAAI 2018): a per-channel scale ``1 + gamma`` and shift ``beta`` after both
        GroupNorms of each conditioned block, projections initialised to zero (identity).
      condition_encoder: also condition the encoder blocks and the bottleneck (default: the
        decoder only, as in the paper).
      param_mean, param_std: standardization ``(p - mean) / std`` of the physics vector before
        the branch, flattened ``(K, PHYSICS_SIZE)``: K = 1, one row for every protocol, or
        K = ``len(SEQUENCES)``, one row per family, chosen by the vector's one-hot family
        (:func:`phyjax.segment.train.parameter_statistics`); empty = none.
      contrast_magnitude: the branch's :func:`contrast_features` are those of magnitude images
        (absolute signals), as the images of a magnitude-trained model are; default signed.
      physics_size: how many leading entries of the physics vector the branch reads:
        :data:`PHYSICS_SIZE` (with the MPRAGE readout train) or :data:`LEGACY_PHYSICS_SIZE`
        (models trained on the static MPRAGE equation; their contrast features are static too).
      b1_input: the branch is also told the transmit field B1+ (``b1`` of :meth:`__call__`):
        per voxel, the physics vector with the flip angle the tissue sees there
        (:func:`scale_flip`) and a 0/1 entry saying whether the map gave it (else B1+ = 1 is
        assumed).  The branch then runs per voxel (its dense layers are 1x1 convolutions) and
        its projection is average-pooled to each conditioned block's resolution: a spatially
        varying bias instead of a per-image one.  With ``b1`` unknown everywhere it is the
        per-image branch, told so.
    """

    features: Sequence[int] = (16, 32, 64)
    n_classes: int = 3
    physics: bool = True
    branch_width: int = 32
    ndim: int = 2
    conditioning: str = "add"
    condition_encoder: bool = False
    param_mean: Sequence[float] = ()
    param_std: Sequence[float] = ()
    contrast_magnitude: bool = False
    physics_size: int = PHYSICS_SIZE
    b1_input: bool = False

    def branch(self, params, param_noise=None, b1=None):
        """The branch's features: ``(B, branch_width)``, or ``(B, *spatial, branch_width)``
        with :attr:`b1_input` (see :meth:`__call__`)."""
        _, inputs, _ = parse_conditioning(self.conditioning)
        size = self.physics_size
        params = params[:, :size]
        known = None
        if self.b1_input:
            if b1 is None:
                raise ValueError("a B1+-input branch needs the b1 map (NaN where unknown).")
            known = jnp.isfinite(b1)
            params = scale_flip(params, jnp.where(known, b1, 1.0))
        n_stats, width = len(self.param_mean), size
        if inputs != "parameters" or (n_stats and n_stats % (size + CONTRAST_SIZE) == 0):
            params, width = extended_vector(params, self.contrast_magnitude), size + CONTRAST_SIZE
        if n_stats:
            if n_stats % width:
                raise ValueError(f"{n_stats} standardization values do not fit physics vectors "
                                 f"of {width} (conditioning {self.conditioning!r}).")
            mean = jnp.asarray(self.param_mean, params.dtype).reshape(-1, width)
            std = jnp.asarray(self.param_std, params.dtype).reshape(-1, width)
            if mean.shape[0] > 1:   # one row per family: picked by the raw one-hot
                onehot = params[..., FAMILY_SLICE]
                mean, std = onehot @ mean, onehot @ std
            params = (params - mean) / std
        if param_noise is not None:   # training-time jitter, in standardized units
            keep = jnp.ones(width, params.dtype).at[FAMILY_SLICE].set(0.0)
            noise = param_noise[:, :width]
            noise = noise.reshape(noise.shape[:1] + (1,) * (params.ndim - 2) + noise.shape[1:])
            params = params + noise * keep
        if inputs == "parameters":
            params = params[..., :size]
        elif inputs == "contrast":
            params = jnp.concatenate([params[..., FAMILY_SLICE], params[..., size:]], -1)
        if known is not None:   # whether the map gave this voxel's B1+ (else nominal assumed)
            params = jnp.concatenate([params, known[..., None].astype(params.dtype)], -1)
        h = nn.relu(nn.Dense(self.branch_width, name="branch_dense_0")(params))
        return nn.relu(nn.Dense(self.branch_width, name="branch_dense_1")(h))

    def _cond(self, h, features: int, name: str, level: int = 0):
        """``(scale, shift)`` for a :class:`ConvBlock` of ``features`` channels at resolution
        ``2 ** -level`` (or None).  A spatial ``h`` (:attr:`b1_input`) is average-pooled to that
        resolution first (the projection is linear, so this is the projection's average)."""
        if h is None:
            return None
        mode, _, zero = parse_conditioning(self.conditioning)
        if h.ndim > 2 and level:
            h = nn.avg_pool(h, (2 ** level,) * self.ndim, (2 ** level,) * self.ndim)
        if mode == "add":
            init = nn.initializers.zeros if zero else nn.linear.default_kernel_init
            return None, nn.Dense(features, name=name, kernel_init=init)(h)[:, None]
        out = nn.Dense(4 * features, name=name, kernel_init=nn.initializers.zeros)(h)
        out = out.reshape(out.shape[:-1] + (2, 2, features))   # (..., scale/shift, k, F)
        return jnp.moveaxis(out[..., 0, :, :], -2, 1), jnp.moveaxis(out[..., 1, :, :], -2, 1)

    @nn.compact
    def __call__(self, x, params=None, param_noise=None, b1=None, branch_keep=None):
        """Logits of ``x`` given ``params``; ``param_noise`` (``(B, PHYSICS_SIZE)``, optional)
        is added to the standardized physics vector (not its one-hot family) -- training-time
        jitter that keeps the branch from resolving single training protocols.

        ``b1`` (``(B, *spatial)``, relative B1+, 1 = nominal; NaN where unknown): read only
        with :attr:`b1_input`, where ``None`` means unknown everywhere.

        ``branch_keep`` (``(B,)``, optional): multiplies each sample's branch features (0: the
        branch is off for that sample -- its projections add only their constant biases, so
        the U-Net segments without the protocol; 1: on).  Branch dropout in training
        (``train.branch_dropout``) and the branch-off pass of averaged inference
        (:class:`phyjax.segment.train.Segmenter`)."""
        if x.ndim != self.ndim + 2:
            raise ValueError(f"expected input of rank {self.ndim + 2} (B, spatial..., C), got "
                             f"shape {x.shape}.")
        parse_conditioning(self.conditioning)   # ValueError for an unknown one
        factor = 2 ** (len(self.features) - 1)
        if any(n % factor for n in x.shape[1:-1]):
            raise ValueError(f"spatial shape {x.shape[1:-1]} not divisible by {factor}.")
        h = None
        if self.physics:
            if params is None:
                raise ValueError("the physics U-Net needs the acquisition parameters.")
            if self.b1_input and b1 is None:
                b1 = jnp.full(x.shape[:-1], jnp.nan, jnp.float32)
            elif self.b1_input and tuple(b1.shape) != tuple(x.shape[:-1]):
                raise ValueError(f"b1 map of shape {tuple(b1.shape)}; expected "
                                 f"{tuple(x.shape[:-1])} (the input's batch and spatial shape).")
            h = self.branch(params, param_noise, b1)
            if branch_keep is not None:
                keep = jnp.asarray(branch_keep, h.dtype)
                h = h * keep.reshape(keep.shape[:1] + (1,) * (h.ndim - 1))
            self.sow("intermediates", "branch", h)   # kept only with mutable=["intermediates"]
        enc = h if self.condition_encoder else None
        window = (2,) * self.ndim
        skips = []
        depth = len(self.features) - 1
        for level, f in enumerate(self.features[:-1]):
            x = ConvBlock(f, self.ndim)(x, self._cond(enc, f, f"branch_to_encoder_{level}",
                                                      level))
            skips.append(x)
            x = nn.max_pool(x, window, window)
        x = ConvBlock(self.features[-1], self.ndim)(
            x, self._cond(enc, self.features[-1], "branch_to_bottleneck", depth))
        for level, (f, skip) in enumerate(zip(reversed(self.features[:-1]), reversed(skips))):
            for axis in range(1, self.ndim + 1):   # nearest-neighbour x2 (sizes divisible)
                x = jnp.repeat(x, 2, axis=axis)
            x = ConvBlock(f, self.ndim)(jnp.concatenate([x, skip], axis=-1),
                                        self._cond(h, f, f"branch_to_decoder_{level}",
                                                   depth - 1 - level))
        return nn.Conv(self.n_classes, (1,) * self.ndim)(x)
