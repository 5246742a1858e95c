"""PhyCHarm end to end: data -> training -> held-out evaluation -> reports; and inference.

``train_and_evaluate(config, workdir)`` is importable from a notebook;
``harmonize(config, workdir)`` applies a trained checkpoint to a user's T1w.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import optax

from phyjax.baselines import BASELINES
from phyjax.data import bids, synthetic
from phyjax.data.nifti import InputError, load_volume, save_like
from phyjax.data.volumes import (brain_slices, from_slices, load_scans, normalize,
                                 pad_to_multiple, split_subjects, to_slices, with_context)
from phyjax.evaluate import report
from phyjax.evaluate.metrics import image_metrics, nrmse
from phyjax.losses import masked_l1, physics_consistency, r1_m0_map_loss, ssim_loss
from phyjax.models.phycharm import PhyCHarm, reference_signal
from phyjax.physics import signal
from phyjax.data.sidecar import protocol_from_sidecar as from_sidecar
from phyjax.physics.sequences import Protocol, encode
from phyjax.physics.tissues import tissue_parameters
from phyjax.train import TrainState, fit, restore_latest

METHOD = "phycharm"


# ----------------------------------------------------------------------------- data

def cache_dir(config) -> str:
    """Where the default dataset is built: config, else $PHYJAX_CACHE, else ~/.cache/phyjax."""
    return (config.data.cache_dir or os.environ.get("PHYJAX_CACHE")
            or os.path.join(os.path.expanduser("~"), ".cache", "phyjax"))


def load_data(config, progress=True):
    """``({subject: {site: Volume}}, dataset root, has ground-truth maps)``.

    Raises InputError if a subject lacks the target site's scan.
    """
    if config.data.bids_root:
        root, maps_for = config.data.bids_root, None
    else:
        root = synthetic.build_default_dataset(config.data, cache_dir(config), progress=progress)

        @functools.lru_cache(maxsize=None)  # one read per (subject, B0), shared by its sites
        def maps_for(subject, b0):
            paths = synthetic.ground_truth_paths(root, subject, b0)
            return load_volume(paths["t1"])[0], load_volume(paths["m0"])[0]
    volumes = load_scans(bids.scan_bids(root), maps_for)
    target = config.data.target_site
    for subject, sites in volumes.items():
        if target not in sites:
            raise InputError(f"{root}: subject {subject} has no scan from the target site "
                             f"{target!r} (sites: {sorted(sites)}).")
    return volumes, root, maps_for is not None


def target_protocol(volumes, target_site) -> Protocol:
    """The target site's protocol (identical for all subjects)."""
    return next(iter(volumes.values()))[target_site].protocol


def stack_site(volumes, subjects, site, target_site, pads, min_fraction, context):
    """Training arrays of one source site: 2.5-D source slices and the paired target slices.

    Returns a dict of float32 arrays ``source (N, H, W, 2 context + 1)`` and
    ``target``, ``mask``, ``t1``, ``m0`` ``(N, H, W, 1)`` over the brain slices of
    ``subjects`` (maps are ones/zeros where no ground truth exists).
    """
    keys = ("source", "target", "mask", "t1", "m0")
    parts = {k: [] for k in keys}
    for s in subjects:
        v, t = volumes[s][site], volumes[s][target_site]
        z = brain_slices(v.mask, min_fraction)
        arrays = {"source": v.image, "target": t.image, "mask": v.mask.astype(np.float32),
                  "t1": v.t1 if v.t1 is not None else np.ones_like(v.image),
                  "m0": v.m0 if v.m0 is not None else np.zeros_like(v.image)}
        for k in keys:
            slices = to_slices(arrays[k], pads)
            parts[k].append(with_context(slices, context)[z] if k == "source"
                            else slices[z][..., None])
    return {k: np.concatenate(p).astype(np.float32) for k, p in parts.items()}


# ----------------------------------------------------------------------------- model

def make_model(config) -> PhyCHarm:
    m = config.model
    return PhyCHarm(features=tuple(m.features), cond_features=m.cond_features,
                    t1_max=m.t1_max, m0_max=m.m0_max)


def make_optimizer(config) -> optax.GradientTransformation:
    t = config.train
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps,
                                                  max(t.steps, t.warmup_steps + 1),
                                                  end_value=0.05 * t.learning_rate)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))


def init_state(config, model, tx, shape) -> TrainState:
    h, w = shape
    x = jnp.zeros((1, h, w, 2 * config.model.context + 1))
    mask = jnp.zeros((1, h, w, 1))
    code = jnp.zeros((1, encode(Protocol(tr=1.0, te=0.0)).shape[-1]))
    tgt = Protocol(tr=2.0, te=0.0, ti=1.0)
    params = model.init(jax.random.key(config.seed), x, mask, code, code, tgt, 1.0, 3.0)["params"]
    return TrainState.create(params, tx)


def make_train_step(model, tx, train_cfg, target: Protocol, target_ref: float):
    """Jit-compiled ``(state, (batch, source_protocol)) -> (state, metrics)``.

    Recompiles once per sequence family of the source protocol (static).
    """

    def loss_fn(params, batch, source_protocol):
        b = batch
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
        loss = (train_cfg.w_map * l_map + train_cfg.w_physics * l_phys
                + train_cfg.w_harm * l_harm + train_cfg.w_ssim * l_ssim)
        return loss, {"loss": loss, "map": l_map, "physics": l_phys, "l1": l_harm,
                      "ssim": 1.0 - l_ssim}

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, batch_and_protocol):
        batch, source_protocol = batch_and_protocol
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, source_protocol)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_predict(model, target: Protocol, target_ref: float):
    """Jit-compiled ``(params, source, mask, source_code, source_B0) -> outputs`` on slice batches."""

    @jax.jit
    def predict(params, source, mask, code_src, source_field_strength):
        code_tgt = jnp.broadcast_to(encode(target), code_src.shape)
        return model.apply({"params": params}, source, mask, code_src, code_tgt, target,
                           target_ref, source_field_strength)

    return predict


def predict_volume(predict, params, image, mask, protocol, pads, batch_size, context):
    """Run the model on every axial slice of a volume; returns dict of ``(X, Y, Z)`` arrays."""
    src = with_context(to_slices(image, pads), context).astype(np.float32)
    msk = to_slices(mask.astype(np.float32), pads)[..., None]
    n = src.shape[0]
    total = -(-n // batch_size) * batch_size
    src = np.concatenate([src, np.zeros((total - n,) + src.shape[1:], np.float32)])
    msk = np.concatenate([msk, np.zeros((total - n,) + msk.shape[1:], np.float32)])
    code = np.broadcast_to(np.asarray(encode(protocol)), (batch_size, int(encode(protocol).shape[-1])))
    outs = []
    for i in range(0, total, batch_size):
        outs.append(jax.device_get(predict(params, src[i:i + batch_size], msk[i:i + batch_size],
                                           code, float(protocol.field_strength))))
    return {k: from_slices(np.concatenate([o[k] for o in outs])[:n, ..., 0], pads)
            for k in outs[0]}


def reference_level(target: Protocol) -> float:
    """Signal of white matter under ``target`` (the unit of re-synthesized target images)."""
    return float(reference_signal(target, tissue_parameters(target.field_strength)["wm"]))


# ----------------------------------------------------------------------------- main job

def _check_resumable(config, workdir):
    """Refuse to resume checkpoints written with a different model, data or seed."""
    path = os.path.join(workdir, "config.json")
    if not (os.path.exists(path) and os.path.isdir(os.path.join(workdir, "checkpoints"))):
        return
    with open(path) as f:
        previous = json.load(f)
    current = json.loads(config.to_json())
    for key in ("model", "data", "seed"):
        if previous.get(key) != current.get(key):
            raise InputError(f"{workdir}: holds checkpoints of a run with a different "
                             f"'{key}' config; use a new --workdir (or delete it) to start over.")


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict:
    """Build/load data, train PhyCHarm, evaluate on held-out subjects, write reports.

    Writes into ``workdir``: ``config.json``, ``split.json``, ``checkpoints/``,
    ``train_log.csv``, ``metrics.csv``, ``metrics.md``, ``maps_metrics.csv``,
    ``harmonized/sub-*/...nii.gz`` and ``figure.png``.  Returns a summary dict.
    """
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    _check_resumable(config, workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    volumes, root, has_maps = load_data(config, progress)
    target_site = config.data.target_site
    sites = sorted({site for v in volumes.values() for site in v})
    source_sites = [s for s in sites if s != target_site]
    train_subjects, test_subjects = split_subjects(volumes, config.data.n_test, config.data.seed)
    with open(os.path.join(workdir, "split.json"), "w") as f:
        json.dump({"dataset": root, "train": train_subjects, "test": test_subjects,
                   "target_site": target_site, "source_sites": source_sites}, f, indent=2)

    target = target_protocol(volumes, target_site)
    target_ref = reference_level(target)
    shape = next(iter(volumes.values()))[target_site].image.shape
    pads = pad_to_multiple(shape[:2], 2 ** (len(config.model.features) - 1))
    train_sites = sites  # the target protocol itself is also a valid source
    arrays = {s: stack_site(volumes, train_subjects, s, target_site, pads,
                             config.data.min_mask_fraction, config.model.context)
              for s in train_sites}
    protocols = {s: volumes[train_subjects[0]][s].protocol for s in train_sites}

    model, tx = make_model(config), make_optimizer(config)
    padded = (shape[0] + sum(pads[0]), shape[1] + sum(pads[1]))
    state = init_state(config, model, tx, padded)
    train_cfg = config.train
    if not has_maps:
        train_cfg = train_cfg.copy_and_resolve_references()
        with train_cfg.unlocked():
            train_cfg.w_map = 0.0
    step = make_train_step(model, tx, train_cfg, target, target_ref)
    bs = config.train.batch_size

    def batch_fn(i):
        site = train_sites[i % len(train_sites)]
        data = arrays[site]
        rng = np.random.default_rng([config.seed, i])
        idx = rng.choice(len(data["source"]), size=bs, replace=len(data["source"]) < bs)
        return {k: v[idx] for k, v in data.items()}, protocols[site]

    t_train = time.time()
    state = fit(state, step, batch_fn, config.train.steps, workdir,
                checkpoint_every=config.train.checkpoint_every,
                log_every=config.train.log_every, progress=progress, desc="PhyCHarm")
    train_seconds = time.time() - t_train

    rows, map_rows, figure_rows = evaluate(config, workdir, volumes, state.params, model, target,
                                           target_ref, train_subjects, test_subjects,
                                           source_sites, pads)
    report.write_metrics(rows, os.path.join(workdir, "metrics.csv"),
                         os.path.join(workdir, "metrics.md"))
    report.write_rows(map_rows, os.path.join(workdir, "maps_metrics.csv"))
    if map_rows:
        with open(os.path.join(workdir, "metrics.md"), "a") as f:
            f.write("\nQuantitative maps predicted by the generator (at the source B0) vs the "
                    "simulated ground truth, NRMSE inside the brain mask.\n\n")
            f.write(report.maps_table(map_rows))
    report.comparison_figure(figure_rows, os.path.join(workdir, "figure.png"),
                             title=f"PhyCHarm, held-out subject {test_subjects[0]} "
                                   f"-> target '{target_site}'")
    summary = {"workdir": workdir, "dataset": root, "train_seconds": train_seconds,
               "total_seconds": time.time() - t0, "rows": rows}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "rows"}, f, indent=2)
    return summary


def evaluate(config, workdir, volumes, params, model, target, target_ref, train_subjects,
             test_subjects, source_sites, pads):
    """Metrics of PhyCHarm and the baselines per held-out subject and source site.

    Baselines are fitted on the target-site images of ``train_subjects`` only.
    Returns ``(rows, map_rows, figure_rows)``.
    """
    overlap = set(train_subjects) & set(test_subjects)
    if overlap:
        raise ValueError(f"subjects {sorted(overlap)} are in both the training and test split.")
    target_site = config.data.target_site
    unknown = sorted(set(config.eval.baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"config.eval.baselines: unknown {unknown}; available {sorted(BASELINES)}.")
    baselines = {name: BASELINES[name]().fit(
        [volumes[s][target_site].image for s in train_subjects],
        [volumes[s][target_site].mask for s in train_subjects]) for name in config.eval.baselines}
    predict = make_predict(model, target, target_ref)
    rows, map_rows, figure_rows = [], [], []
    for subject in test_subjects:
        truth = volumes[subject][target_site]
        for site in source_sites:
            v = volumes[subject][site]
            outputs = {name: b(v.image, v.mask) for name, b in baselines.items()}
            pred = predict_volume(predict, params, v.image, v.mask, v.protocol, pads,
                                  config.eval.batch_size, config.model.context)
            outputs[METHOD] = np.where(v.mask, pred["harmonized"], 0.0)
            for method, image in outputs.items():
                m = image_metrics(image, truth.image, truth.mask)
                rows.append({"method": method, "site": site, "subject": subject, **m})
            if v.t1 is not None:
                map_rows.append({"site": site, "subject": subject,
                                 "t1_nrmse": float(nrmse(pred["t1"], v.t1, v.mask)),
                                 "m0_nrmse": float(nrmse(pred["m0"], v.m0, v.mask))})
            if config.eval.save_volumes:
                ref = nib.load(v.path)  # header and affine only; the data is in memory
                out = os.path.join(workdir, "harmonized", f"sub-{subject}",
                                   f"sub-{subject}_ses-{site}_desc-{METHOD}_T1w.nii.gz")
                save_like(outputs[METHOD], ref, out)
            if subject == test_subjects[0]:
                figure_rows.append({"label": site, "source": v.image, "harmonized":
                                    outputs[METHOD], "truth": truth.image, "mask": truth.mask})
    return rows, map_rows, figure_rows


# ----------------------------------------------------------------------------- real input

def _run_config(config, workdir):
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise InputError(f"{workdir}: no trained run here (config.json missing); train first "
                         "with --config.mode=train_eval.")
    with open(path) as f:
        return json.load(f)


def harmonize(config, workdir: str) -> str:
    """Harmonize one T1w NIfTI to the trained target protocol; returns the output path.

    The input is resampled to the training voxel size (axis-aligned RAS),
    harmonized slice by slice, and resampled back onto the input's grid; the
    output has the input's affine and shape, intensities in units of the
    target protocol's white matter (normalized as in training).
    Raises InputError naming the file for a missing/invalid input, mask or sidecar.
    """
    from nilearn.image import resample_img  # heavy import

    h = config.harmonize
    if not h.input:
        raise InputError("--config.harmonize.input is required in harmonize mode.")
    image, img = load_volume(h.input)  # the user's file first: its errors matter most
    trained = _run_config(config, workdir)
    if h.mask:
        mask = np.zeros(image.shape, np.float32)
        for part in h.mask.split(","):
            m, _ = load_volume(part)
            if m.shape != image.shape:
                raise InputError(f"{part}: mask shape {m.shape} != image shape {image.shape}.")
            mask += m
        mask = mask > 0.5
    else:
        mask = image > 0
    if not mask.any():
        raise InputError(f"{h.mask or h.input}: brain mask is empty.")
    sidecar_file = h.sidecar or bids.sidecar_path(h.input)
    overrides = {"RepetitionTime": h.tr, "EchoTime": h.te, "InversionTime": h.ti,
                 "FlipAngle": h.flip_angle, "MagneticFieldStrength": h.field_strength}
    overrides = {k: v for k, v in overrides.items() if v is not None and v >= 0}
    if h.sidecar or os.path.exists(sidecar_file) or not overrides:
        sidecar = bids.read_sidecar(sidecar_file)  # errors name the file
    else:
        sidecar = {}  # all parameters from the command line
    try:
        protocol = from_sidecar(sidecar, source=sidecar_file if sidecar else "command line",
                                sequence=h.sequence or None, overrides=overrides)
    except ValueError as exc:
        raise InputError(str(exc)) from exc

    vs = float(trained["data"]["voxel_size"])
    mask_img = nib.Nifti1Image(mask.astype(np.float32), img.affine)
    masked_img = nib.Nifti1Image(np.where(mask, image, 0).astype(np.float32), img.affine)
    target_affine = np.diag([vs, vs, vs])
    low = resample_img(masked_img, target_affine=target_affine, interpolation="continuous",
                       force_resample=True, copy_header=True)
    with warnings.catch_warnings():  # a binary mask is resampled smoothly, then thresholded
        warnings.filterwarnings("ignore", message="Resampling binary images")
        low_mask = resample_img(mask_img, target_affine=low.affine, target_shape=low.shape,
                                interpolation="continuous", force_resample=True,
                                copy_header=True).get_fdata() > 0.5
    low_data = np.asarray(low.get_fdata(), np.float32)
    low_norm = normalize(low_data, low_mask)

    trained_cfg = config.copy_and_resolve_references()
    with trained_cfg.unlocked():
        for key in ("features", "cond_features", "t1_max", "m0_max", "context"):
            trained_cfg.model[key] = trained["model"][key]
    model = make_model(trained_cfg)
    split = json.load(open(os.path.join(workdir, "split.json")))
    t_cfg = trained["data"]["sites"][split["target_site"]]
    target = synthetic.site_protocol(t_cfg)
    target_ref = reference_level(target)
    levels = 2 ** (len(trained_cfg.model.features) - 1)
    pads = pad_to_multiple(low_norm.shape[:2], levels)
    padded = (low_norm.shape[0] + sum(pads[0]), low_norm.shape[1] + sum(pads[1]))
    like = init_state(trained_cfg, model, make_optimizer(trained_cfg), padded)
    state = restore_latest(os.path.join(workdir, "checkpoints"), like)
    if state is None:
        raise InputError(f"{workdir}/checkpoints: no checkpoint to harmonize with.")
    predict = make_predict(model, target, target_ref)
    pred = predict_volume(predict, state.params, low_norm, low_mask, protocol, pads,
                          config.eval.batch_size, trained_cfg.model.context)
    harmonized_low = nib.Nifti1Image(np.where(low_mask, pred["harmonized"], 0).astype(np.float32),
                                     low.affine)
    back = resample_img(harmonized_low, target_affine=img.affine, target_shape=image.shape,
                        interpolation="continuous", force_resample=True, copy_header=True)
    harmonized = np.where(mask, np.asarray(back.get_fdata(), np.float32), 0.0)
    out = h.output or os.path.join(
        workdir, "harmonized", os.path.basename(h.input).split(".nii")[0] + "_harmonized.nii.gz")
    save_like(harmonized, img, out)
    if h.figure:
        report.input_output_figure(normalize_for_display(image, mask), harmonized, mask,
                                   out.split(".nii")[0] + ".png",
                                   title=f"{os.path.basename(h.input)} ({protocol.sequence}, "
                                         f"{protocol.field_strength:g} T) -> {split['target_site']}")
    return out


def normalize_for_display(image, mask):
    return np.where(mask, normalize(image, mask), 0.0)


def run(config, workdir: str):
    """Dispatch on ``config.mode``: ``train_eval`` or ``harmonize``."""
    if config.mode == "train_eval":
        return train_and_evaluate(config, workdir)
    if config.mode == "harmonize":
        return harmonize(config, workdir)
    raise ValueError(f"Unknown mode {config.mode!r}; expected 'train_eval' or 'harmonize'.")
