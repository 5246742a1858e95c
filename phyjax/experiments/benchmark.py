"""The benchmark: how different are the sites, and how much does each harmonization method help?

``python -m phyjax.main --config=configs/benchmark.py --workdir=runs/benchmark`` runs
:func:`benchmark` on the embedded default data (or ``--config.data.bids_root``):

1. **Site differences before harmonization** (every subject, every site): radiomic features in the
   brain mask (:mod:`phyjax.radiomics`: first-order, GLCM, GLRLM), per-site distributions, a
   Kruskal-Wallis test per feature and the cross-validated accuracy of a site classifier
   (folds grouped by subject; chance level and a within-subject permutation p-value).
2. **Fit every method on the training subjects only**: no harmonization, z-score, histogram
   matching, Nyúl, WhiteStripe (fitted on the target protocol's training images), ComBat (on the
   radiomic features and tissue volumes of all training images; skipped with a note in
   ``benchmark.md`` when a site has fewer than 2 training images), a supervised U-Net (no physics;
   same pairs, steps, batch size, optimizer and image losses as PhyCHarm) and PhyCHarm
   (:func:`phyjax.experiments.phycharm.train_and_evaluate`, reused as is).
3. **Evaluate on held-out subjects**, every source site against the same subject's target-protocol
   image: SSIM / PSNR / NRMSE in the brain mask; CSF / GM / WM segmentation by one fixed DIPY HMRF
   segmenter -> Dice, IoU, F1, precision, recall against the target image's segmentation;
   absolute and relative tissue-volume differences; coefficient of variation of each tissue
   volume across the source sites of a subject; median relative error of the radiomic features
   against the target image's; and the site classifier's accuracy after harmonization
   (leave-one-subject-out over the held-out subjects).
4. **Report**: ``benchmark.md``, ``benchmark.csv`` (method x site/overall, mean and 95 % CI over
   subjects), ``benchmark_per_subject.csv``, ``benchmark_subject_level.csv``,
   ``site_features.csv``, ``site_distributions.csv``, ``examples.png``, ``volumes.png``,
   ``radiomics.png``, ``split.json``, ``config.json``; ``unet/`` and ``phycharm/`` hold the
   networks' checkpoints (a re-run resumes from them).

Held out means held out, structurally: every fit function takes a :class:`TrainingSet`, which only
:meth:`Split.training_set` can build and which holds only the training subjects' volumes; every
fitted method is a :class:`Fitted` that records the subjects it saw; evaluation goes through
:meth:`Split.held_out_subjects` and :meth:`Split.check_rows`, which raise :class:`LeakageError`
if a test subject was seen by any fitted method.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.baselines import BASELINES, ComBat
from phyjax.data.volumes import Volume, pad_to_multiple, split_subjects
from phyjax.evaluate import benchmark_report as report
from phyjax.evaluate.metrics import image_metrics
from phyjax.evaluate.overlap import (TISSUES, coefficient_of_variation, tissue_overlap,
                                     tissue_volumes, volume_differences)
from phyjax.evaluate.segmentation import TissueSegmenter
from phyjax.evaluate.site_difference import (FeatureExtractor, radiomic_relative_error,
                                             site_classifier, site_difference, t_interval)
from phyjax.experiments import phycharm

IMAGE_BASELINES = ("none", "zscore", "histmatch", "nyul", "whitestripe")
NETWORKS = ("unet", "phycharm")
FEATURE_METHODS = ("combat",)
AVAILABLE = IMAGE_BASELINES + FEATURE_METHODS + NETWORKS
VOLUME_FEATURES = tuple(f"volume_{t}" for t in TISSUES)


# ----------------------------------------------------------------------------- held-out guarantee

class LeakageError(RuntimeError):
    """A subject used to fit a method appears among the subjects it is evaluated on."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Disjoint, sorted training and test subjects (split by subject, never by image or slice)."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self):
        train, test = tuple(sorted(set(self.train))), tuple(sorted(set(self.test)))
        if not train or not test:
            raise ValueError(f"a split needs training and test subjects (train={train}, "
                             f"test={test}).")
        both = sorted(set(train) & set(test))
        if both:
            raise LeakageError(f"subjects {both} are in both the training and the test split.")
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "test", test)

    @classmethod
    def by_subject(cls, subjects, n_test: int, seed: int) -> "Split":
        """Seeded split of ``subjects`` (:func:`phyjax.data.volumes.split_subjects`, as PhyCHarm)."""
        train, test = split_subjects(subjects, n_test, seed)
        return cls(tuple(train), tuple(test))

    def training_set(self, volumes: Mapping[str, Any]) -> "TrainingSet":
        """The only way to obtain what fit functions accept: the training subjects' data."""
        return TrainingSet(self, volumes, _token=_TOKEN)

    def held_out_subjects(self, fitted: Mapping[str, "Fitted"]) -> tuple[str, ...]:
        """The test subjects, after checking that no fitted method has seen any of them."""
        for f in fitted.values():
            seen = sorted(set(self.test) & f.fitted_on)
            if seen:
                raise LeakageError(f"method {f.method!r} was fitted on test subject(s) {seen}.")
        return self.test

    def check_rows(self, rows, fitted: Mapping[str, "Fitted"]) -> None:
        """Every evaluation row is a test subject that the row's method has not seen."""
        for r in rows:
            subject, method = r["subject"], r["method"]
            if subject not in self.test:
                raise LeakageError(f"evaluation row for subject {subject!r} ({method}), which is "
                                   "not a test subject.")
            if method in fitted and subject in fitted[method].fitted_on:
                raise LeakageError(f"method {method!r} is evaluated on subject {subject!r}, "
                                   "which it was fitted on.")


_TOKEN = object()


class TrainingSet:
    """The training subjects' volumes, ``{subject: {site: Volume}}`` (read-only); nothing else.

    Built only by :meth:`Split.training_set`; fit functions refuse anything else.
    """

    def __init__(self, split: Split, volumes: Mapping[str, Any], *, _token=None):
        if _token is not _TOKEN:
            raise TypeError("build a TrainingSet with Split.training_set(volumes).")
        missing = [s for s in split.train if s not in volumes]
        if missing:
            raise ValueError(f"training subjects {missing} have no data.")
        self.split = split
        self.subjects: tuple[str, ...] = split.train
        self.volumes = MappingProxyType({s: volumes[s] for s in split.train})


def _require_training_set(train) -> TrainingSet:
    if not isinstance(train, TrainingSet):
        raise TypeError("fit functions take a TrainingSet from Split.training_set(volumes), got "
                        f"{type(train).__name__}.")
    return train


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A method fitted on ``fitted_on``; ``harmonize(volume) -> image`` for image-level methods."""

    method: str
    fitted_on: frozenset
    model: Any = None
    harmonize: Callable[[Volume], np.ndarray] | None = None


# ----------------------------------------------------------------------------- fitting

def fit_image_baseline(name: str, train: TrainingSet, target_site: str,
                       options: Mapping[str, Any] | None = None) -> Fitted:
    """Fit an intensity baseline on the target-site images of the training subjects."""
    train = _require_training_set(train)
    if name not in BASELINES:
        raise ValueError(f"unknown image baseline {name!r}; available: {sorted(BASELINES)}.")
    images = [train.volumes[s][target_site].image for s in train.subjects]
    masks = [train.volumes[s][target_site].mask for s in train.subjects]
    baseline = BASELINES[name](**dict(options or {})).fit(images, masks)
    return Fitted(name, frozenset(train.subjects), baseline,
                  lambda v: np.asarray(baseline(v.image, v.mask), np.float32))


def fit_combat(train: TrainingSet, keys: list[tuple[str, str]], table: np.ndarray,
               target_site: str, options: Mapping[str, Any] | None = None) -> Fitted:
    """ComBat on the rows of ``table`` (keys ``(subject, site)``) that belong to training subjects.

    The model maps features into the target site's space (``to_site``).  Raises ValueError
    (from :class:`ComBat`) when a site has fewer than 2 training images.
    """
    train = _require_training_set(train)
    rows = [i for i, (subject, _) in enumerate(keys) if subject in train.subjects]
    combat = ComBat(**dict(options or {})).fit(np.asarray(table)[rows],
                                               [keys[i][1] for i in rows])
    return Fitted("combat", frozenset(keys[i][0] for i in rows), combat, None)


def _network_setup(volumes, subjects, target_site, features):
    shape = volumes[subjects[0]][target_site].image.shape
    pads = pad_to_multiple(shape[:2], 2 ** (len(features) - 1))
    padded = (shape[0] + sum(pads[0]), shape[1] + sum(pads[1]))
    sites = sorted({site for s in subjects for site in volumes[s]})
    return shape, pads, padded, sites


def fit_unet(config, train: TrainingSet, workdir: str, progress: bool = True) -> Fitted:
    """Supervised U-Net (no physics): source slices -> target slices, same budget as PhyCHarm.

    :class:`phyjax.models.ConditionalUNet` on the same 2.5-D slice pairs of the training subjects
    and every site (the target protocol included), trained with ``config.train`` (steps, batch
    size, optimizer and schedule of :func:`phyjax.experiments.phycharm.make_optimizer`, loss
    ``w_harm * L1 + w_ssim * (1 - SSIM)``) by :func:`phyjax.train.fit` (checkpoints in
    ``workdir``).  The output is a residual on the centre slice; ``config.unet.condition``
    ``"none"`` (default) gives it no acquisition information, ``"protocol"`` feeds the encoded
    source protocol through FiLM.
    """
    from phyjax.losses import masked_l1, ssim_loss
    from phyjax.models.unet import ConditionalUNet
    from phyjax.physics.sequences import encode
    from phyjax.train import TrainState, fit

    train = _require_training_set(train)
    u, target_site = config.unet, config.data.target_site
    if u.condition not in ("none", "protocol"):
        raise ValueError(f"unet.condition must be 'none' or 'protocol', got {u.condition!r}.")
    volumes, subjects = train.volumes, list(train.subjects)
    _, pads, padded, sites = _network_setup(volumes, subjects, target_site, u.features)
    context = config.model.context
    arrays = {s: phycharm.stack_site(volumes, subjects, s, target_site, pads,
                                      config.data.min_mask_fraction, context) for s in sites}

    def code_of(protocol):
        return (np.asarray(encode(protocol), np.float32) if u.condition == "protocol"
                else np.zeros(1, np.float32))

    codes = {s: code_of(volumes[subjects[0]][s].protocol) for s in sites}
    model = ConditionalUNet(features=tuple(u.features), out_channels=1,
                            cond_features=u.cond_features)
    tx = phycharm.make_optimizer(config)
    x0 = jnp.zeros((1,) + padded + (2 * context + 1,))
    params = model.init(jax.random.key(config.seed), x0,
                        jnp.zeros((1,) + codes[sites[0]].shape))["params"]
    state = TrainState.create(params, tx)

    def harmonized(params, source, mask, code):
        out = model.apply({"params": params}, source, code)
        if u.residual:
            out = out + source[..., context:context + 1]
        return out * mask

    t = config.train

    def loss_fn(params, batch):
        out = harmonized(params, batch["source"], batch["mask"], batch["code"])
        l1 = masked_l1(out, batch["target"], batch["mask"])
        l_ssim = ssim_loss(out, batch["target"], batch["mask"])
        loss = t.w_harm * l1 + t.w_ssim * l_ssim
        return loss, {"loss": loss, "l1": l1, "ssim": 1.0 - l_ssim}

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, batch):
        import optax

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def batch_fn(i):  # the same site cycling and sampling as PhyCHarm's training
        site = sites[i % len(sites)]
        data = arrays[site]
        rng = np.random.default_rng([config.seed, i])
        idx = rng.choice(len(data["source"]), size=t.batch_size,
                         replace=len(data["source"]) < t.batch_size)
        batch = {k: data[k][idx] for k in ("source", "target", "mask")}
        batch["code"] = np.broadcast_to(codes[site], (t.batch_size,) + codes[site].shape)
        return batch

    state = fit(state, step, batch_fn, t.steps, workdir, checkpoint_every=t.checkpoint_every,
                log_every=t.log_every, progress=progress, desc="U-Net")

    @jax.jit
    def predict(params, source, mask, code, _field_strength):
        code = code if u.condition == "protocol" else jnp.zeros((source.shape[0], 1))
        return {"harmonized": harmonized(params, source, mask, code)}

    def harmonize(v: Volume) -> np.ndarray:
        out = phycharm.predict_volume(predict, state.params, v.image, v.mask, v.protocol, pads,
                                      config.eval.batch_size, context)["harmonized"]
        return np.where(v.mask, out, 0.0).astype(np.float32)

    return Fitted("unet", frozenset(train.subjects), state, harmonize)


def phycharm_config(config):
    """The PhyCHarm run config inside a benchmark config (same data, model and training)."""
    from ml_collections import ConfigDict

    return ConfigDict({
        "method": "phycharm", "mode": "train_eval", "seed": config.seed,
        "data": config.data.to_dict(), "model": config.model.to_dict(),
        "train": config.train.to_dict(),
        "eval": {"baselines": (), "save_volumes": False, "batch_size": config.eval.batch_size}})


def fit_phycharm(config, train: TrainingSet, workdir: str, progress: bool = True) -> Fitted:
    """Train PhyCHarm with :func:`phyjax.experiments.phycharm.train_and_evaluate` in ``workdir``.

    PhyCHarm's own run loads the data and splits it by subject with the same function and seed;
    its ``split.json`` must list exactly ``train.subjects`` as training subjects, else
    :class:`LeakageError`.  The trained checkpoint is restored for inference.
    """
    from phyjax.train import restore_latest

    train = _require_training_set(train)
    sub = phycharm_config(config)
    phycharm.train_and_evaluate(sub, workdir, progress=progress)
    with open(os.path.join(workdir, "split.json")) as f:
        trained_on = tuple(json.load(f)["train"])
    if trained_on != train.subjects:
        raise LeakageError(f"PhyCHarm was trained on {list(trained_on)}, the benchmark split's "
                           f"training subjects are {list(train.subjects)}.")
    target_site = config.data.target_site
    _, pads, padded, _ = _network_setup(train.volumes, list(train.subjects), target_site,
                                        sub.model.features)
    model, tx = phycharm.make_model(sub), phycharm.make_optimizer(sub)
    state = restore_latest(os.path.join(workdir, "checkpoints"),
                           phycharm.init_state(sub, model, tx, padded))
    if state is None:
        raise RuntimeError(f"{workdir}/checkpoints: PhyCHarm left no checkpoint.")
    target = phycharm.target_protocol(train.volumes, target_site)
    predict = phycharm.make_predict(model, target, phycharm.reference_level(target))

    def harmonize(v: Volume) -> np.ndarray:
        out = phycharm.predict_volume(predict, state.params, v.image, v.mask, v.protocol, pads,
                                      config.eval.batch_size, sub.model.context)["harmonized"]
        return np.where(v.mask, out, 0.0).astype(np.float32)

    return Fitted("phycharm", frozenset(trained_on), state, harmonize)


# ----------------------------------------------------------------------------- helpers

def voxel_volume_mm3(volume: Volume) -> float:
    """Voxel volume from the NIfTI header of the scan (mm^3)."""
    import nibabel as nib

    return float(np.prod(nib.load(volume.path).header.get_zooms()[:3]))


def selected_methods(config) -> tuple[str, ...]:
    methods = tuple(config.methods)
    unknown = [m for m in methods if m not in AVAILABLE]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {list(AVAILABLE)}.")
    if not methods:
        raise ValueError("config.methods is empty.")
    return methods


def _baseline_options(config, name):
    return {"nyul": dict(min_percentile=config.nyul.min_percentile,
                         max_percentile=config.nyul.max_percentile, step=config.nyul.step),
            "whitestripe": dict(width=config.whitestripe.width)}.get(name, {})


def _extractor(config) -> FeatureExtractor:
    r = config.radiomics
    return FeatureExtractor(bin_width=r.bin_width, n_bins=r.n_bins, max_bins=r.max_bins,
                            classes=tuple(r.classes), batch_size=r.batch_size)


def _segmenter(config) -> TissueSegmenter:
    s = config.segmentation
    return TissueSegmenter(beta=s.beta, max_iter=s.max_iter, tolerance=s.tolerance)


def _log(progress, msg):
    if progress:
        print(f"[benchmark] {msg}", flush=True)


# ----------------------------------------------------------------------------- main job

class _Raw:
    """Raw (unharmonized) images: segmentations (cached) and tissue volumes."""

    def __init__(self, volumes, segment: TissueSegmenter):
        self.volumes, self.segment = volumes, segment
        self.voxel_mm3 = {s: voxel_volume_mm3(next(iter(v.values()))) for s, v in volumes.items()}
        self._labels: dict[tuple[str, str], np.ndarray] = {}

    def labels(self, subject, site) -> np.ndarray:
        if (subject, site) not in self._labels:
            v = self.volumes[subject][site]
            self._labels[(subject, site)] = self.segment(v.image, v.mask)
        return self._labels[(subject, site)]

    def tissue_volumes(self, subject, site) -> dict[str, float]:
        return tissue_volumes(self.labels(subject, site), self.voxel_mm3[subject])

    def combat_row(self, features, subject, site) -> np.ndarray:
        """Radiomic features followed by the tissue volumes (ComBat's feature vector)."""
        vols = self.tissue_volumes(subject, site)
        return np.concatenate([features, [vols[t] for t in TISSUES]])


def fit_methods(config, methods, train: TrainingSet, raw: _Raw, raw_feat, workdir, progress,
                timings, notes) -> dict[str, Fitted]:
    """Fit every selected method on ``train`` (ComBat on raw features + volumes)."""
    target_site = config.data.target_site
    fitted: dict[str, Fitted] = {}
    for name in methods:
        t = time.time()
        if name in IMAGE_BASELINES:
            fitted[name] = fit_image_baseline(name, train, target_site,
                                              _baseline_options(config, name))
        elif name == "combat":
            keys = [k for k in raw_feat if k[0] in train.subjects]
            table = np.stack([raw.combat_row(raw_feat[k], *k) for k in keys])
            cb = config.combat
            try:
                fitted[name] = fit_combat(train, keys, table, target_site,
                                          dict(eb=cb.eb, parametric=cb.parametric,
                                               mean_only=cb.mean_only))
            except ValueError as exc:   # e.g. a site with one training subject
                notes.append(f"ComBat skipped: {exc}")
        elif name == "unet":
            fitted[name] = fit_unet(config, train, os.path.join(workdir, "unet"), progress)
        elif name == "phycharm":
            fitted[name] = fit_phycharm(config, train, os.path.join(workdir, "phycharm"), progress)
        timings[f"fit_{name}"] = time.time() - t
    return fitted


def evaluate_images(config, fitted, test_subjects, source_sites, raw: _Raw, extractor, canvas,
                    notes, example_subject, progress):
    """Per-image rows and radiomic features of every image method on the held-out subjects."""
    t0 = time.time()
    target_site, volumes = config.data.target_site, raw.volumes
    image_methods = [m for m, f in fitted.items() if f.harmonize is not None]
    rows, feats, examples = [], {}, None
    for subject in test_subjects:
        truth = volumes[subject][target_site]
        truth_labels = raw.labels(subject, target_site)
        truth_vol = raw.tissue_volumes(subject, target_site)
        sites = [s for s in source_sites if s in volumes[subject]]
        outputs = {}
        for site in sites:
            v = volumes[subject][site]
            for m in image_methods:
                img = outputs[(m, site)] = fitted[m].harmonize(v)
                labels = raw.labels(subject, site) if m == "none" else raw.segment(img, v.mask)
                vols = tissue_volumes(labels, raw.voxel_mm3[subject])
                rows.append({"method": m, "site": site, "subject": subject,
                             **image_metrics(img, truth.image, truth.mask),
                             **tissue_overlap(labels, truth_labels, truth.mask),
                             **{f"volume_{k}": x for k, x in vols.items()},
                             **volume_differences(vols, truth_vol)})
        order = list(outputs)
        masks = [volumes[subject][site].mask for _, site in order]
        capped = sorted({k[0] for k, m in zip(order, masks)
                         if extractor.bins_needed(outputs[k], m) > extractor.max_bins})
        if capped:
            notes.append(f"Radiomics: outputs of {', '.join(capped)} for subject {subject} span "
                         f"more than {extractor.max_bins} grey levels; their top levels were "
                         "merged.")
        _, table = extractor.table([outputs[k] for k in order], masks, canvas)
        feats.update({(m, subject, site): x for (m, site), x in zip(order, table)})
        if subject == example_subject:
            examples = {"sites": sites, "methods": image_methods, "output": outputs,
                        "source": {s: volumes[subject][s].image for s in sites},
                        "truth": truth.image, "mask": truth.mask}
        _log(progress, f"evaluated subject {subject} ({time.time() - t0:.0f} s)")
    return rows, feats, examples


def evaluate_combat(fitted: Fitted, test_subjects, source_sites, target_site, raw: _Raw,
                    raw_feat, n_features):
    """Per-image rows of ComBat: held-out features and volumes mapped into the target site."""
    rows, feats = [], {}
    for subject in test_subjects:
        sites = [s for s in source_sites if s in raw.volumes[subject]]
        x = np.stack([raw.combat_row(raw_feat[(subject, s)], subject, s) for s in sites])
        y = fitted.model.transform(x, sites, to_site=target_site)
        truth_vol = raw.tissue_volumes(subject, target_site)
        for site, row in zip(sites, y):
            f, vols = row[:n_features], dict(zip(TISSUES, map(float, row[n_features:])))
            feats[("combat", subject, site)] = f
            rows.append({"method": "combat", "site": site, "subject": subject,
                         **{f"volume_{k}": x_ for k, x_ in vols.items()},
                         **volume_differences(vols, truth_vol)})
    return rows, feats


def subject_level(methods, rows, feats, test_subjects, source_sites, c, notes):
    """Per (method, subject): CoV of tissue volumes across source sites, site-classifier accuracy.

    The classifier is trained and tested on the held-out subjects' outputs of one method,
    leave-one-subject-out (needs >= 2 held-out subjects and >= 2 source sites, else ``nan``).
    """
    subject_rows = []
    for m in methods:
        for subject in test_subjects:
            rs = [r for r in rows if r["method"] == m and r["subject"] == subject]
            row = {"method": m, "subject": subject}
            for t in TISSUES:
                vals = [r[f"volume_{t}"] for r in rs]
                row[f"cov_{t}"] = (coefficient_of_variation(vals)
                                   if len(vals) >= 2 and np.mean(vals) > 0 else float("nan"))
            row["site_acc"] = float("nan")
            subject_rows.append(row)
    classifier = {}
    if len(test_subjects) < 2 or len(source_sites) < 2:
        notes.append("Site classifier after harmonization not computed: it needs at least 2 "
                     "held-out subjects and 2 source sites.")
        return subject_rows, classifier
    for m in methods:
        keys = [(m, s, site) for s in test_subjects for site in source_sites if (m, s, site) in feats]
        res = classifier[m] = site_classifier(
            np.stack([feats[k] for k in keys]), [k[2] for k in keys], [k[1] for k in keys],
            n_splits=len(test_subjects), c=c.c)
        for row in subject_rows:
            if row["method"] == m:
                row["site_acc"] = res["per_group"].get(row["subject"], float("nan"))
    return subject_rows, classifier


def benchmark(config, workdir: str, progress: bool = True) -> dict:
    """Run the whole benchmark (see the module docstring); returns a summary dict."""
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    methods = selected_methods(config)
    volumes, root, _ = phycharm.load_data(config, progress)
    target_site = config.data.target_site
    all_sites = sorted({site for v in volumes.values() for site in v})
    source_sites = [s for s in all_sites if s != target_site]
    split = Split.by_subject(volumes, config.data.n_test, config.data.seed)
    example_subject = config.eval.example_subject or split.test[0]
    if example_subject not in split.test:
        raise ValueError(f"eval.example_subject {example_subject!r} is not a held-out subject "
                         f"({list(split.test)}).")
    extractor, raw = _extractor(config), _Raw(volumes, _segmenter(config))
    timings, notes = {}, []

    # 1. Site differences before harmonization: every subject, every site, raw images.
    t = time.time()
    keys = [(s, site) for s in sorted(volumes) for site in sorted(volumes[s])]
    canvas = extractor.canvas([volumes[s][site].mask for s, site in keys])
    names, raw_table = extractor.table([volumes[s][site].image for s, site in keys],
                                       [volumes[s][site].mask for s, site in keys], canvas)
    raw_feat = dict(zip(keys, raw_table))
    c = config.classifier
    site_diff = site_difference(names, raw_table, [k[1] for k in keys], [k[0] for k in keys],
                                n_splits=c.n_splits, c=c.c, n_permutations=c.n_permutations,
                                seed=c.seed)
    report.write_rows([{"subject": s, "site": site, **dict(zip(names, map(float, x)))}
                       for (s, site), x in raw_feat.items()],
                      os.path.join(workdir, "site_features.csv"))
    report.write_rows(site_diff["distributions"], os.path.join(workdir, "site_distributions.csv"))
    timings["site_difference"] = time.time() - t
    _log(progress, f"site classifier before harmonization: "
                   f"{site_diff['classifier']['accuracy']:.2f} "
                   f"(chance {site_diff['classifier']['chance']:.2f})")

    # 2. Fit every method on the training subjects only.
    fitted = fit_methods(config, methods, split.training_set(volumes), raw, raw_feat, workdir,
                         progress, timings, notes)
    with open(os.path.join(workdir, "split.json"), "w") as f:
        json.dump({"dataset": root, "train": list(split.train), "test": list(split.test),
                   "target_site": target_site, "source_sites": source_sites,
                   "fitted_on": {m: sorted(f.fitted_on) for m, f in fitted.items()}}, f, indent=2)

    maps_csv = os.path.join(workdir, "phycharm", "maps_metrics.csv")
    if "phycharm" in fitted and os.path.exists(maps_csv) and os.path.getsize(maps_csv) > 0:
        import csv

        with open(maps_csv) as f:
            maps = list(csv.DictReader(f))
        t1, m0 = (t_interval([float(r[k]) for r in maps]) for k in ("t1_nrmse", "m0_nrmse"))
        notes.append(f"PhyCHarm's quantitative maps on the held-out subjects: T1 NRMSE "
                     f"{t1[0]:.3f}, M0 NRMSE {m0[0]:.3f} (mean over {t1[3]} images; "
                     "`phycharm/maps_metrics.csv`).")

    # 3. Evaluate on held-out subjects.
    t = time.time()
    test_subjects = split.held_out_subjects(fitted)
    rows, feats, examples = evaluate_images(config, fitted, test_subjects, source_sites, raw,
                                            extractor, canvas, notes, example_subject, progress)
    if "combat" in fitted:
        combat_rows, combat_feats = evaluate_combat(fitted["combat"], test_subjects, source_sites,
                                                    target_site, raw, raw_feat, len(names))
        rows += combat_rows
        feats.update(combat_feats)
    for r in rows:
        r["radiomic_relerr"] = radiomic_relative_error(
            feats[(r["method"], r["subject"], r["site"])], raw_feat[(r["subject"], target_site)])
    evaluated = [m for m in methods if m in fitted]
    subject_rows, classifier_after = subject_level(evaluated, rows, feats, test_subjects,
                                                   source_sites, c, notes)
    split.check_rows(rows, fitted)
    split.check_rows(subject_rows, fitted)
    timings["evaluate"] = time.time() - t

    # 4. Report.
    summary = report.aggregate(rows, subject_rows, methods=evaluated)
    report.write_rows(rows, os.path.join(workdir, "benchmark_per_subject.csv"))
    report.write_rows(subject_rows, os.path.join(workdir, "benchmark_subject_level.csv"))
    report.write_rows(summary, os.path.join(workdir, "benchmark.csv"))
    figures = {}
    if examples is not None:
        figures["examples"] = report.examples_figure(
            examples, os.path.join(workdir, "examples.png"),
            title=f"held-out subject {example_subject}: source -> each method -> target "
                  f"'{target_site}'")
    truth_volumes = {s: raw.tissue_volumes(s, target_site) for s in test_subjects}
    figures["volumes"] = report.volume_boxplots(rows, truth_volumes,
                                                os.path.join(workdir, "volumes.png"),
                                                evaluated, source_sites)
    shown = [f for f in config.report.features if f in names]
    col = {f: names.index(f) for f in shown}
    before = {site: {f: [float(x[col[f]]) for (_, s_), x in raw_feat.items() if s_ == site]
                     for f in shown} for site in all_sites}
    after = {m: {site: {f: [float((raw_feat[(s, site)] if site == target_site
                                   else feats[(m, s, site)])[col[f]])
                            for s in test_subjects
                            if (s, site) in raw_feat and (site == target_site
                                                          or (m, s, site) in feats)]
                        for f in shown} for site in all_sites} for m in evaluated}
    figures["radiomics"] = report.feature_distributions(
        before, after, shown, os.path.join(workdir, "radiomics.png"), evaluated, all_sites)
    timings["total"] = time.time() - t0
    with open(os.path.join(workdir, "benchmark.md"), "w") as f:
        f.write(_markdown(config, summary, site_diff, classifier_after, split, fitted,
                          source_sites, all_sites, names, notes, timings, root))
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({"dataset": root, "timings_s": timings, "notes": notes,
                   "methods": evaluated}, f, indent=2)
    return {"workdir": workdir, "dataset": root, "total_seconds": time.time() - t0,
            "rows": rows, "subject_rows": subject_rows, "summary": summary,
            "site_difference": site_diff, "classifier_after": classifier_after,
            "split": split, "fitted": fitted, "notes": notes, "figures": figures}


def _markdown(config, summary, site_diff, classifier_after, split, fitted, source_sites,
              all_sites, names, notes, timings, root) -> str:
    clf, (acc, lo, hi, n) = site_diff["classifier"], site_diff["accuracy_ci"]
    r = config.radiomics
    out = ["# Harmonization benchmark", "",
           f"Dataset `{root}`; target protocol **{config.data.target_site}**; "
           f"{len(split.train) + len(split.test)} subjects ({len(split.train)} training: "
           f"{', '.join(split.train)}; {len(split.test)} held-out: {', '.join(split.test)}); "
           f"source sites: {', '.join(source_sites)}.  Total time {timings['total']:.0f} s.", "",
           "## 1. How different are the sites? (before harmonization, every subject and site)", "",
           f"Radiomic features ({len(names)}: {', '.join(r.classes)}; phyjax.radiomics, "
           f"PyRadiomics names, bin width {r.bin_width:g}) of the brain mask of "
           f"{clf['n_samples']} images.", "",
           f"* **Site classifier** (standardized logistic regression, {clf['n_folds']}-fold "
           f"cross-validation grouped by subject): accuracy **{clf['accuracy']:.2f}**"
           + (f" (95 % CI over subjects {lo:.2f}–{hi:.2f})" if n >= 2 and np.isfinite(lo) else "")
           + f"; chance level **{clf['chance']:.2f}** ({clf['n_sites']} sites)"
           + (f"; permutation p = {clf['p_value']:.3g} (site labels shuffled within subjects)"
              if np.isfinite(clf["p_value"]) else "") + ".",
           f"* **Kruskal-Wallis** per feature: {site_diff['n_significant']} of "
           f"{site_diff['n_features']} features differ between sites (Bonferroni-corrected "
           f"p < {site_diff['alpha']}).", ""]
    feats = [f for f in config.report.features if f in names]
    if feats:
        dist = {(d["site"], d["feature"]): d for d in site_diff["distributions"]}
        out += ["Per-site median [IQR] (all rows in `site_distributions.csv`):", "",
                "| site | " + " | ".join(feats) + " |", "|---|" + "---|" * len(feats)]
        for s in all_sites:
            out.append(f"| {s} | " + " | ".join(
                f"{dist[(s, f)]['median']:.3g} [{dist[(s, f)]['q25']:.3g}, {dist[(s, f)]['q75']:.3g}]"
                for f in feats) + " |")
        out.append("")
    main = ["ssim", "psnr", "nrmse", "dice_csf", "dice_gm", "dice_wm", "vol_reldiff_gm",
            "vol_reldiff_wm", "cov_gm", "cov_wm", "radiomic_relerr", "site_acc"]
    chance = (1.0 / len(source_sites)) if source_sites else float("nan")
    out += ["## 2. Harmonization on held-out subjects (overall)", "",
            "Mean ± half-width of the Student-t 95 % CI over held-out subjects (each subject's "
            "source sites averaged first); best in bold; `–` = does not apply (ComBat changes "
            "features and volumes, not images).  Site-classifier chance level after "
            f"harmonization: {chance:.2f} ({len(source_sites)} source sites).", "",
            report.markdown_table(summary, main),
            "## 3. Per source site", "",
            report.markdown_table(summary, ["ssim", "psnr", "nrmse", "dice_gm", "dice_wm",
                                            "vol_reldiff_gm", "vol_reldiff_wm",
                                            "radiomic_relerr"], site=None,
                                  first=("site", "method")).replace(
                                      f"| {report.OVERALL} |", "| *overall* |"),
            "## 4. Tissue segmentation against the target image's segmentation (overall)", "",
            report.markdown_table(summary, [f"{m}_{t}" for m in ("iou", "f1", "precision", "recall")
                                            for t in ("gm", "wm")]),
            "## 5. Tissue volumes (overall)", "",
            report.markdown_table(summary, [f"volume_{t}" for t in TISSUES]
                                  + [f"vol_absdiff_{t}" for t in TISSUES]
                                  + [f"cov_{t}" for t in TISSUES]),
            "## 6. Site classifier after harmonization", "",
            "Leave-one-held-out-subject-out on each method's outputs for the source sites "
            f"(chance {chance:.2f}); the same classifier before harmonization on the held-out "
            "subjects is the `none` row.", ""]
    if classifier_after:
        out += ["| method | accuracy | n images |", "|---|---|---|"]
        out += [f"| {m} | {res['accuracy']:.2f} | {res['n_samples']} |"
                for m, res in classifier_after.items()]
        out.append("")
    out += ["## Notes", "",
            "* Held out: "
            + ("every method was fitted on the training subjects "
               + ", ".join(split.train) + " only"
               if all(f.fitted_on == frozenset(split.train) for f in fitted.values())
               else "; ".join(f"{m} fitted on {', '.join(sorted(f.fitted_on))}"
                              for m, f in fitted.items()))
            + " (`split.json`, `fitted_on`); every evaluation row is checked against it.",
            "* Intensity baselines (z-score, histogram matching, Nyúl via intensity-normalization, "
            "WhiteStripe via intensity-normalization) are fitted on the target protocol's images of "
            "the training subjects and map each source image into the target's intensity units.  "
            "The segmenter rescales each image's in-brain percentiles, so per-image affine "
            "methods (z-score, WhiteStripe) cannot change segmentations or volumes.",
            "* ComBat (neuroCombat; no covariates) is fitted on radiomic features + tissue volumes of "
            "all training images and maps held-out features into the target site's space.",
            f"* Segmentation: DIPY HMRF (beta {config.segmentation.beta:g}, at most "
            f"{config.segmentation.max_iter} iterations), the same for every image; |ΔV| and Dice "
            "are against the segmentation of the same subject's target-protocol image; CoV = sample "
            "SD / mean of a tissue's volume over the source sites of one subject.",
            "* Radiomic rel. error: median over features of |f - f_target| / |f_target|.",
            f"* U-Net and PhyCHarm: {config.train.steps} steps, batch {config.train.batch_size} "
            "(`config.train`).",
            "* Figures: `examples.png`, `volumes.png`, `radiomics.png`."]
    out += [f"* {n_}" for n_ in notes]
    return "\n".join(out) + "\n"


def run(config, workdir: str):
    """Entry point of ``config.method == "benchmark"``."""
    return benchmark(config, workdir)
