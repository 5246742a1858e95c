"""A resumable training loop shared by every method.

``fit`` runs a jit-compiled ``step_fn(state, batch) -> (state, metrics)`` for
``steps`` steps, draws batch ``i`` with ``batch_fn(i)`` (a pure function of
the step, so a resumed run sees the same batches as an uninterrupted one),
shows a tqdm progress bar with the loss, appends metrics to a CSV and saves
Orbax checkpoints; if checkpoints exist in ``workdir`` it resumes from the
latest one.
"""

from __future__ import annotations

import csv
import functools
import os
import time
from collections import Counter
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import struct
from tqdm.auto import tqdm

from phyjax.data.atomic import atomic_open
from phyjax.data.nifti import InputError


@struct.dataclass
class TrainState:
    """Parameters, optimizer state and step counter (a pytree; checkpointed whole)."""

    step: jnp.ndarray
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """Jit-compiled ``(state, inputs) -> (state, metrics)`` for ``loss_fn(params, *inputs)``.

    ``loss_fn`` returns ``(loss, metrics dict)``; the state is donated (updated in place).
    Static pytree fields of ``inputs`` (e.g. a :class:`~phyjax.physics.Protocol`'s sequence
    family) recompile once per value.
    """

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, inputs):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, *inputs)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def checkpoint_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """Orbax manager for ``directory`` (created if needed)."""
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def restore_latest(directory: str, like: TrainState) -> TrainState | None:
    """Latest checkpoint in ``directory`` restored into the structure of ``like``, or None.

    Raises InputError naming ``directory`` when the checkpoint's arrays do not fit ``like`` (a
    run folder resumed with other network settings, e.g. one trained before
    ``config.model.base=gated`` became the default)."""
    if not os.path.isdir(directory):
        return None
    manager = ocp.CheckpointManager(os.path.abspath(directory),
                                    item_handlers=ocp.StandardCheckpointHandler())
    step = manager.latest_step()
    if step is None:
        manager.close()
        return None

    def unfit(why):
        return InputError(
            f"the checkpoint in {directory} (step {step}) does not fit the network these settings "
            f"build ({why}). Resume it with the settings it was trained with (its run folder's "
            "config.json; e.g. --config.model.base=resynth for a PhyCHarm trained before the "
            "gated base became the default), or train into a new --workdir.")

    # shapes compared before reading any array: a restore that fails half-way leaves orbax's
    # asynchronous reads behind (unraisable "Event loop is closed" warnings later)
    # (as multisets: the saved tree's leaves come in another order than the dataclass's)
    saved = Counter(tuple(m.shape) for m in jax.tree_util.tree_leaves(manager.item_metadata(step)))
    wanted = Counter(tuple(jnp.shape(x)) for x in jax.tree_util.tree_leaves(like))
    if saved != wanted:
        manager.close()
        only_saved, only_wanted = sorted((saved - wanted).elements()), sorted(
            (wanted - saved).elements())
        raise unfit(f"{sum(saved.values())} arrays saved, {sum(wanted.values())} expected; "
                    f"shapes only in the checkpoint {only_saved[:6]}, only in the network "
                    f"{only_wanted[:6]}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError) as e:
        raise unfit(e) from e
    finally:
        manager.close()
    return restored


def _truncate_log(path: str, step: int) -> None:
    """Drop the rows of ``path`` after ``step`` (logged by a run killed before its next
    checkpoint), so that a resumed run does not log those steps twice.  The file is replaced
    atomically."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    # A row cut short by the kill (fewer fields than the header) goes too.
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(float(r[0])) <= step
                        ] if step else []
    if len(kept) == len(rows):
        return
    with atomic_open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def _align_log(path: str, fields: list[str]) -> list[str]:
    """The columns to append rows to ``path`` with: ``fields`` for a new or empty log; else the
    log's own header, with any of ``fields`` it lacks added after it (the earlier rows left
    empty there, the file replaced atomically) -- a run resumed by a version of the code that
    logs another metric keeps every row under its own column names."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return fields
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    merged = header + [k for k in fields if k not in header]
    if merged != header:
        with atomic_open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(merged)
            out.writerows(r + [""] * (len(merged) - len(r)) for r in rows[1:])
    return merged


def fit(state: TrainState, step_fn: Callable, batch_fn: Callable[[int], Any], steps: int,
        workdir: str, checkpoint_every: int = 100, log_every: int = 10,
        progress: bool = True, desc: str = "train") -> TrainState:
    """Train to ``steps`` total steps, resuming from ``workdir/checkpoints`` if present.

    Args:
      state: freshly initialized state (its structure is the restore template).
      step_fn: ``(state, batch) -> (state, metrics dict of scalars)``, jit-compiled.
      batch_fn: ``step -> batch``; must depend only on the step (and fixed data).
      steps: total number of optimizer steps.
      workdir: run folder; checkpoints in ``workdir/checkpoints``, metrics in
        ``workdir/train_log.csv`` (with ``seconds_per_step``, wall time since the previous row;
        the first row includes compilation; rows after the restored step are dropped on resume).
    Returns: the final state (also saved as a checkpoint).
    Raises InputError when the latest checkpoint is past ``steps`` (a run that trained longer:
    returning it would pass a longer-trained network off as this one).
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    restored = restore_latest(ckpt_dir, state)
    if restored is not None:
        state = restored
    start = int(state.step)
    if start > steps:
        raise InputError(f"{ckpt_dir}: its latest checkpoint is at step {start}, past the "
                         f"{steps} steps asked for; train in another workdir, or give "
                         f"{start} steps to use it.")
    manager = checkpoint_manager(ckpt_dir)
    log_path = os.path.join(workdir, "train_log.csv")
    _truncate_log(log_path, start)
    writer_file = open(log_path, "a", newline="")
    writer = None
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    last_time, last_step = time.perf_counter(), start
    try:
        for i in range(start, steps):
            state, metrics = step_fn(state, batch_fn(i))
            if (i + 1) % log_every == 0 or i + 1 == steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()   # device_get waited for the step: wall time per step
                values["seconds_per_step"] = (now - last_time) / (i + 1 - last_step)
                last_time, last_step = now, i + 1
                bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")
                if writer is None:
                    writer_file.close()
                    fields = _align_log(log_path, ["step", *values])
                    writer_file = open(log_path, "a", newline="")
                    writer = csv.DictWriter(writer_file, fieldnames=fields, restval="")
                    if writer_file.tell() == 0:
                        writer.writeheader()
                writer.writerow({"step": i + 1, **values})
                writer_file.flush()
            if (i + 1) % checkpoint_every == 0 or i + 1 == steps:
                manager.save(i + 1, args=ocp.args.StandardSave(state))
            bar.update()
    finally:
        bar.close()
        manager.wait_until_finished()
        manager.close()
        writer_file.close()
    return state
