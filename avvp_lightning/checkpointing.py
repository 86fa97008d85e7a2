"""Checkpoints that survive crashes, resume exactly and fail early when they do not fit.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file beside the target and
  renames it into place, so a process killed while saving leaves the previous file intact.
* :class:`RngStateCallback` stores the global RNG states (torch, CUDA, numpy, random) in every
  checkpoint and puts them back when ``fit`` resumes, so dropout after a resume draws what an
  uninterrupted run would have drawn (Lightning restores weights, optimizer, schedulers and
  loops, not the RNGs).
* :class:`RunCheckpoint` keeps the record of the best checkpoint when a run folder has moved
  before it is resumed (Lightning would start a new record and replace ``best.ckpt``).
* :class:`DivergenceStop` ends a fit whose weights turned NaN or inf with one
  :class:`~avvp_lightning.errors.DataError`, before a checkpoint of them replaces a good one.
* :func:`check_checkpoint` compares a checkpoint's weights with a model before a run starts and
  raises one :class:`~avvp_lightning.errors.DataError` that names the file and the mismatch
  (a checkpoint of the other stage, or one trained with another architecture or size).

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled objects.
"""

from __future__ import annotations

import inspect
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.core.optimizer import _configure_optimizers
from pytorch_lightning.plugins.io import TorchCheckpointIO

from avvp_lightning.errors import DataError
from avvp_lightning.runinfo import write_atomic

# First component of the weight names -> what wrote the checkpoint.
KNOWN_MODELS = {
    "parser": "a finetune checkpoint (avvp-finetune, ParserModule)",
    "encoder": "a pretrain checkpoint (avvp-pretrain, PretrainModule)",
}
SHOWN = 3  # examples of each kind of mismatch spelled out in a message


# ---------------------------------------------------------------------------------- atomic saves
class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on local paths.

    The checkpoint goes to ``.<name>.tmp-<pid>`` in the target's folder, is flushed to disk, then
    replaces the target with ``os.replace`` (atomic on POSIX and Windows within one file system).
    Remote (``scheme://``) paths are saved by Lightning as before.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-save
            if not _process_alive(stale.name.rsplit("-", 1)[-1]):  # not another live run's save in progress
                stale.unlink(missing_ok=True)

        def save(file: Any) -> None:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint

        write_atomic(path, save)  # .<name>.tmp-<pid>, renamed over the old file; removed if the save fails
        _fsync_folder(path.parent)


def _process_alive(pid: str) -> bool:
    """Whether a process of this id runs on this machine (another user's counts; not a number: no)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists (another user's: PermissionError), or cannot tell: leave its file
    return True


def _fsync_folder(folder: Path) -> None:
    """Persist a rename (POSIX; a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# ------------------------------------------------------------------------------------ RNG states
def collect_rng_states() -> dict[str, Any]:
    """The global RNG states, as tensors and plain values (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states from :func:`collect_rng_states` (CUDA only when the device count matches)."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RngStateCallback(pl.Callback):
    """Saves the global RNG states with every checkpoint and restores them when ``fit`` resumes.

    The states are those at the moment of saving (the end of an epoch for the stage checkpoints);
    they are put back at ``on_train_start`` of the resumed run, after Lightning's own start-up
    (sanity check, loader set-up), so the next training step draws exactly what the uninterrupted
    run drew. Exact for checkpoints saved at epoch ends; a mid-epoch checkpoint resumes with the
    right RNG but Lightning does not replay the rest of that epoch's order. Under DDP every rank
    restores rank zero's states, which ``seed_everything`` makes equal to its own.
    """

    def __init__(self) -> None:
        self._pending: Optional[dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return "RngStates"

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps its record of the best checkpoint when the run folder moves.

    Lightning stores the callback's absolute ``dirpath`` in each checkpoint and, when a resumed
    run's ``dirpath`` differs (the outputs moved or were copied to another machine, another mount
    point after a cluster requeue, a relative ``--run.output_dir`` from another directory), drops
    the best score: the resumed run's first validation then replaces ``best.ckpt`` even when it
    is worse. Here the stored paths are mapped into the new folder and the record is kept when
    every checkpoint it names is there (the run folder moved as a whole). A record whose files are
    not there (another run's checkpoint resumed into a new folder, or one whose files were moved
    away or deleted) is dropped with a warning: a new record starts, so the next validation
    writes ``best.ckpt`` (Lightning would keep the score of a file that is gone, and might never
    write one).
    """

    _stage: Optional[str] = None  # Lightning's stage (fit, validate, test, predict), set up before a restore

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:  # noqa: D102
        super().setup(trainer, pl_module, stage)
        self._stage = str(getattr(stage, "value", stage))

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s own key, so checkpoints written with either class resume alike."""
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            moved = self._moved(state_dict, Path(old), Path(self.dirpath))
            if moved is None:  # a path outside the old folder: Lightning's behaviour (a warning, a new record)
                super().load_state_dict(state_dict)
                return
            state_dict = moved
        missing = [path for path in [*(state_dict.get("best_k_models") or {}), state_dict.get("best_model_path")]
                   if path and not Path(path).is_file()]
        if missing:  # another run's checkpoint, or the record's files were moved away (previous/) or deleted
            if self._stage not in (None, "fit"):  # validate/test/predict write no checkpoints: nothing to say
                return
            warnings.warn(f"{self.dirpath}: the checkpoint record names {missing[0]}, which is not there; a new "
                          f"record of the best checkpoint starts here", stacklevel=1)
            return
        super().load_state_dict(state_dict)

    @staticmethod
    def _moved(state: dict[str, Any], old: Path, new: Path) -> Optional[dict[str, Any]]:
        """``state`` with its paths under ``old`` moved to ``new``, or None when one is outside ``old``."""

        def move(path: Any) -> Any:
            if not path:
                return path
            try:
                return str(new / Path(path).relative_to(old))
            except ValueError:
                raise LookupError(path) from None

        try:
            best_k = {move(path): score for path, score in (state.get("best_k_models") or {}).items()}
            return {**state, "dirpath": str(new), "best_k_models": best_k,
                    **{key: move(state.get(key)) for key in ("best_model_path", "kth_best_model_path",
                                                             "last_model_path")}}
        except LookupError:
            return None


class DivergenceStop(pl.Callback):
    """Stops ``fit`` with a :class:`~avvp_lightning.errors.DataError` once the weights are not finite.

    A learning rate far too high (or exploding gradients) turns the weights into NaN or inf; a
    run would otherwise go on training nothing, log NaN losses and replace ``last.ckpt`` (and,
    in pretraining, ``best.ckpt``) with unusable weights. The weights are checked (one sum per
    tensor, about 10 ms for the paper's parser on a 2-core CPU) every ``every_n_steps`` steps, on
    each epoch's last step and end and before each validation of a fit (once per optimizer step),
    so the check runs before any checkpoint callback saves (Lightning runs those last) and nothing
    a diverged run would write replaces the checkpoints of its earlier epochs. The decision rests on the weights alone,
    which every DDP process holds alike, so all processes stop at the same step; a step that a
    gradient scaler skips (``16-mixed`` overflow) leaves the weights finite and training goes on.

    Args:
        lr_option: The command-line option of the learning rate, for the message.
        every_n_steps: Check every this many optimizer steps too (besides epoch ends).
    """

    def __init__(self, lr_option: str = "--optimizer.lr", every_n_steps: int = 50) -> None:
        self.lr_option = lr_option
        self.every_n_steps = max(int(every_n_steps), 1)
        self._loss: Optional[torch.Tensor] = None  # the last training step's loss, for the message
        self._lr: Optional[float] = None  # and its learning rate
        self._checked: Optional[int] = None  # the optimizer step whose weights were checked last

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # the step's learning rate (Lightning steps epoch schedulers before the last batch's end hooks)
        self._lr = next((group["lr"] for opt in trainer.optimizers for group in opt.param_groups), None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._loss = loss if isinstance(loss, torch.Tensor) else None
        if batch_idx + 1 >= trainer.num_training_batches or trainer.global_step % self.every_n_steps == 0:
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)  # an epoch cut short (--trainer.max_steps) saves last.ckpt here

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._checked == trainer.global_step:  # the same weights (gradient accumulation, epoch end)
            return
        self._checked = trainer.global_step
        named = [(name, p) for name, p in pl_module.named_parameters() if p.numel()]
        if not named:
            return
        # (P,) NaN and inf carry into the sums; 16-bit weights summed in float32 (no false overflow)
        sums = torch.stack([p.detach().sum(dtype=torch.float32 if p.element_size() < 4 else None) for _, p in named])
        finite = torch.isfinite(sums)  # (P,)
        if bool(finite.all()):  # one sync
            return
        bad = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
        loss = f"{float(self._loss):.4g}" if self._loss is not None and self._loss.numel() == 1 else "unknown"
        lr = f"; the last step's was {float(self._lr):.3g}" if isinstance(self._lr, (int, float, torch.Tensor)) else ""
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        kept = sorted(p.name for p in Path(folder).glob("*.ckpt")) if folder and Path(folder).is_dir() else []
        saved = (f"the checkpoints written before stay as they were ({', '.join(kept)} in {folder})" if kept
                 else "no checkpoint was written before")
        named_bad = bad[0] + (", ..." if len(bad) > 1 else "")
        raise DataError(
            f"training diverged at epoch {trainer.current_epoch}, step {trainer.global_step}: {len(bad)} of the "
            f"model's weight tensors are no longer finite (NaN or inf; {named_bad}), the last training loss "
            f"is {loss}. Start again with a lower learning rate ({self.lr_option}{lr}) or clipped gradients "
            f"(--trainer.gradient_clip_val 1.0, say); {saved}")


# ------------------------------------------------------------------------------ compatibility
def load_checkpoint(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """A Lightning checkpoint read on the CPU; DataError if unusable.

    ``weights_only=True`` (the default) admits tensors and plain containers only; pass False
    only for a file you trust as you would trust code.
    """
    if not str(path).strip():
        raise DataError(f"--ckpt_path {str(path)!r}: empty (an unset variable?); give a checkpoint file")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, not a checkpoint file' if path.is_dir() else 'checkpoint not found'}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # truncated, not a torch file, or objects other than tensors/containers
        with open(path, "rb") as file:
            head = file.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: zip (or a legacy pickle)
            raise DataError(f"{path}: not a PyTorch checkpoint file (it starts with {head!r}; a checkpoint is the "
                            ".ckpt file that fit writes to <run>/checkpoints/)") from None
        if weights_only and isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower():
            raise DataError(f"{path}: holds pickled Python objects besides tensors and plain containers, which "
                            "checkpoints are not loaded with (they could run code); if you trust the file as you "
                            "would trust code, give --weights_only false (fit, validate, test, predict)") from None
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # without terminal colour codes
        reason = reason.splitlines()[0] if reason else ""
        reason = reason if len(reason) <= 300 else reason[:300].rsplit(" ", 1)[0] + " ..."  # cut at a word
        raise DataError(f"{path}: not a readable checkpoint: truncated or corrupt, or not written by "
                        f"avvp-lightning ({type(err).__name__}: {reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DataError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return checkpoint


def checkpoint_kind(state_dict: dict[str, Any]) -> str:
    """What wrote a checkpoint, from the first component of its weight names."""
    prefixes = sorted({name.split(".", 1)[0] for name in state_dict})
    known = [KNOWN_MODELS[p] for p in prefixes if p in KNOWN_MODELS]
    if not prefixes:
        return "a checkpoint without weights"
    return known[0] if len(known) == 1 else f"a checkpoint with weights under {', '.join(p + '.*' for p in prefixes)}"


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def check_checkpoint(path: str | Path, model: torch.nn.Module, checkpoint: Optional[dict[str, Any]] = None,
                     weights_only: bool = True) -> dict[str, Any]:
    """Check that the checkpoint at ``path`` holds weights of exactly ``model``'s shapes.

    Args:
        path: The checkpoint file (named in the error).
        model: The configured model (a LightningModule with ``hparams``, or any module).
        checkpoint: The already loaded checkpoint (read from ``path`` when None).
        weights_only: Read ``path`` with ``torch.load(weights_only=...)``.

    Returns:
        The checkpoint.

    Raises:
        DataError: Unreadable file, or weights missing, unexpected or of other shapes; the message
            says which stage wrote the checkpoint when it is the other one, and which
            hyperparameters differ from the configured ones.
    """
    checkpoint = load_checkpoint(path, weights_only) if checkpoint is None else checkpoint
    theirs, ours = checkpoint["state_dict"], model.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    reshaped = [k for k in ours if k in theirs and _shape(ours[k]) != _shape(theirs[k])]
    if not (missing or unexpected or reshaped):
        broken = [k for k, v in theirs.items()
                  if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:  # a diverged run's weights: every prediction would be NaN, every score 0
            raise DataError(f"{path}: {len(broken)} weight tensor(s) hold NaN or inf values ({broken[0]}"
                            f"{', ...' if len(broken) > 1 else ''}): the weights of a run that diverged; "
                            "give a checkpoint of an earlier epoch")
        return checkpoint
    name = type(model).__name__
    ours_kind, theirs_kind = checkpoint_kind(ours), checkpoint_kind(theirs)
    if ours_kind != theirs_kind and {k.split(".", 1)[0] for k in ours}.isdisjoint(k.split(".", 1)[0] for k in theirs):
        raise DataError(f"{path}: this is {theirs_kind}, but {name} needs {ours_kind}; give a checkpoint "
                        "written by the same stage")
    trained = checkpoint.get("hyper_parameters") or {}
    configured = dict(getattr(model, "hparams", {}) or {})
    differ = [k for k in configured if not k.startswith("_") and k in trained and trained[k] != configured[k]]
    message = f"{path}: does not fit the configured {name}: "
    if differ:
        message += ("it was trained with " + ", ".join(f"{k}={trained[k]!r}" for k in differ) + " but this run has "
                    + ", ".join(f"{k}={configured[k]!r}" for k in differ) + ". ")
    parts = []
    if reshaped:
        shown = "; ".join(f"{k} {_shape(theirs[k])} in the checkpoint, {_shape(ours[k])} configured"
                          for k in reshaped[:SHOWN])
        parts.append(f"{len(reshaped)} of another shape ({shown}{'; ...' if len(reshaped) > SHOWN else ''})")
    for what, keys in (("missing from the checkpoint", missing), ("not in the configured model", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''})")
    raise DataError(message + "Weights: " + "; ".join(parts) + ". Use the config (--config, --model.*, "
                    "--data.*_dim) the checkpoint was trained with.")


# Optimizer settings that change how a step is computed, not what it computes.
_SPEED_ONLY = ("foreach", "fused", "capturable", "differentiable")
# Param group entries that schedulers move as training runs (any scheduler moves ``lr``, whose start is
# ``initial_lr``; OneCycleLR and CyclicLR cycle the momentum or beta1).
_SCHEDULED = ("lr", "initial_lr")
# Param group entries that schedulers add (OneCycleLR): compared where both sides have them.
_SCHEDULER_ADDED = ("max_lr", "min_lr", "max_momentum", "base_momentum")
# Scheduler attributes set from their constructor's arguments under other names (ReduceLROnPlateau's
# min_lr, CyclicLR's max_lr, step sizes and momentum bounds).
_RENAMED = ("min_lrs", "max_lrs", "total_size", "step_ratio", "base_momentums", "max_momentums")


def _plain(value: Any) -> Any:
    """A setting as a comparable plain value (tuples as lists, one-number tensors as floats)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _group_settings(group: dict[str, Any], scheduled: bool) -> dict[str, Any]:
    """The settings of an optimizer param group that training does not move.

    ``scheduled``: a scheduler ran on the group; then ``lr`` counts by its start (``initial_lr``,
    where the scheduler keeps one; ReduceLROnPlateau keeps none) and a cycled momentum not at all.
    """
    cycled = "base_momentum" in group  # OneCycleLR / CyclicLR with cycle_momentum
    settings = {k: _plain(v) for k, v in group.items() if k not in ("params", *_SCHEDULED, *_SPEED_ONLY)
                and not (cycled and k == "momentum")}
    if cycled and isinstance(settings.get("betas"), list):
        settings["betas"] = settings["betas"][1:]  # beta1 cycles, beta2 stays
    if not scheduled or "initial_lr" in group:
        settings["lr"] = _plain(group.get("initial_lr", group.get("lr")))
    return settings


def _scheduler_settings(scheduler: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of a scheduler's state that its constructor sets (step_size, gamma, T_max, ...), not its counters."""
    arguments: set[str] = set()
    for cls in type(scheduler).__mro__:  # Lightning's ReduceLROnPlateau passes torch's arguments on as *args
        try:
            arguments |= set(inspect.signature(cls.__dict__["__init__"]).parameters)
        except (KeyError, TypeError, ValueError):
            continue
    return {k: _plain(v) for k, v in state.items()
            if (k in arguments or k in _RENAMED) and k not in ("self", "optimizer", "last_epoch", "verbose")}


def check_training_state(path: str | Path, checkpoint: dict[str, Any], model: Any) -> None:
    """Check that ``fit`` can continue ``checkpoint``'s training with the configured optimizer and schedule.

    A fit from a checkpoint restores its optimizer and scheduler state, whose settings (learning
    rate, betas, weight decay, step size, ...) replace the configured ones without a word, and the
    run record would name settings the run never used. So they must agree; and a checkpoint of
    weights only (``save_weights_only``) cannot be continued at all.

    Raises:
        DataError: No optimizer state, another optimizer, or other settings.
    """
    saved = checkpoint.get("optimizer_states")
    if not saved or "loops" not in checkpoint:
        raise DataError(f"{path}: holds the weights only (no optimizer state or loop counters, as "
                        "save_weights_only writes), so fit cannot continue its training; validate, test and "
                        "predict can use it")
    try:  # Lightning's own reading of configure_optimizers' forms; schedulers may come in config dicts
        optimizers, configs, _ = _configure_optimizers(model.configure_optimizers())
    except Exception:  # noqa: BLE001 - a model without its optimizers set up: nothing to compare
        return
    schedulers = [c["scheduler"] if isinstance(c, dict) else c for c in configs]
    differ: list[str] = []
    if len(optimizers) != len(saved):
        differ.append(f"{len(saved)} optimizer(s) in the checkpoint, {len(optimizers)} configured")
    for optimizer, state in zip(optimizers, saved):
        groups, saved_groups = optimizer.param_groups, state.get("param_groups", [])
        if len(groups) != len(saved_groups):
            differ.append(f"{len(saved_groups)} parameter group(s) in the checkpoint, {len(groups)} configured")
            continue
        for group, saved_group in zip(groups, saved_groups):
            ours = _group_settings(group, bool(schedulers))
            theirs = _group_settings(saved_group, bool(checkpoint.get("lr_schedulers")))
            keys_ours, keys_theirs = set(ours) - set(_SCHEDULER_ADDED), set(theirs) - set(_SCHEDULER_ADDED)
            if keys_ours - keys_theirs - {"lr"} and keys_theirs - keys_ours - {"lr"}:
                differ.append(f"another optimizer (its settings {sorted(set(theirs) - set(ours))}, configured "
                              f"{sorted(set(ours) - set(theirs))}) than {type(optimizer).__name__}")
                break
            differ += [f"optimizer {k} {theirs[k]!r} in the checkpoint, {v!r} configured" for k, v in ours.items()
                       if k in theirs and theirs[k] != v]
    saved_schedulers = checkpoint.get("lr_schedulers") or []
    if len(schedulers) != len(saved_schedulers):
        differ.append(f"{len(saved_schedulers)} LR scheduler(s) in the checkpoint, {len(schedulers)} configured")
    for scheduler, state in zip(schedulers, saved_schedulers):
        theirs = _scheduler_settings(scheduler, state)
        differ += [f"lr_scheduler {k} {theirs[k]!r} in the checkpoint, {v!r} configured"
                   for k, v in _scheduler_settings(scheduler, scheduler.state_dict()).items()
                   if k in theirs and theirs[k] != v]
    differ = list(dict.fromkeys(differ))  # (once for all parameter groups)
    if differ:
        shown = "; ".join(differ[:6]) + (f"; and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise DataError(f"{path}: fit continues this checkpoint's training, whose optimizer and scheduler state "
                        f"would replace the configured settings unseen: {shown}. Give the options it was trained "
                        "with (its run's config-fit.yaml), or leave --ckpt_path out to train anew")
