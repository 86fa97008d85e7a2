"""The LightningCLI shared by ``avvp-pretrain`` and ``avvp-finetune``.

Entry-point support only: nothing in the library (data, models, losses, metrics,
grounding) imports this module. What it adds to a plain ``LightningCLI``:

* ``--config NAME.yaml`` given as a bare name resolves to the bundled file of the stage
  (``avvp_lightning/configs/<stage>/NAME.yaml``), from any directory; a path still works.
* The stage's ``defaults.yaml`` (the tuned hyperparameters) is always loaded first, so a
  table row is a small override file.
* ``--run.*`` settings: the run's name, W&B group/tags/project and output folder. Every
  run writes to ``<run.output_dir>/<run.name>/seed<seed>/`` (checkpoints, CSV logs, the
  resolved config, test outputs); ``--ckpt_path best|last`` resolve inside that folder.
* Loggers: a CSV logger always, plus W&B, offline unless ``WANDB_MODE=online`` (or
  ``--run.wandb online``); ``WANDB_MODE=disabled`` turns it off. W&B never prompts.
* Memory (``--run.reuse_memory``, on by default): on Linux with glibc, freed memory stays in the
  process for the next step's tensors instead of going back to the kernel (see
  :func:`reuse_freed_memory`).
* Precision (where the stage opts in, ``auto_precision``): an unset ``--trainer.precision``
  becomes ``bf16-mixed`` for ``fit`` on hardware that runs bfloat16 natively (a CUDA GPU with
  bf16, a CPU with AVX512-BF16 or AMX), else ``32-true``; evaluation subcommands stay in
  ``32-true``. The choice is printed and saved with the config.
* Reliability: checkpoints are saved atomically and carry the RNG states (a run resumed with
  ``--ckpt_path last`` repeats the uninterrupted one exactly); a checkpoint is checked against
  the configured model before anything runs; every subcommand records its seed, resolved config,
  package versions and data fingerprint in ``<run folder>/run.json`` (``test`` also in
  ``metrics.json``); from the command line a :class:`DataError` is one ``error:`` line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from functools import partial
from importlib import resources
from pathlib import Path
from types import MethodType
from typing import Any, Literal, Optional

import torch
from lightning_fabric.accelerators.cuda import num_cuda_devices
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback, instantiate_class
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.utilities import rank_zero_info

from avvp_lightning import runinfo
from avvp_lightning.checkpointing import (AtomicCheckpointIO, DivergenceStop, RngStateCallback, RunCheckpoint,
                                          check_checkpoint, check_training_state)
from avvp_lightning.errors import DataError

def _picks_cuda(accelerator: str) -> bool:
    """Whether ``accelerator`` selects a CUDA GPU here (NVML's device count: CUDA is not initialised)."""
    return accelerator in ("auto", "gpu", "cuda") and num_cuda_devices() > 0


def native_bf16(accelerator: str) -> bool:
    """Whether the device ``accelerator`` picks runs bfloat16 natively (not emulated).

    CUDA: ``torch.cuda.is_bf16_supported`` without emulation (compute capability 8.0+). CPU:
    the AVX512-BF16 or AMX-BF16 instructions. Anything else (MPS, ...): False.
    """
    import torch

    if _picks_cuda(accelerator):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch: no emulation argument
            return bool(torch.cuda.is_bf16_supported())
    if accelerator not in ("auto", "cpu"):
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is not None for check in checks):
        return any(check() for check in checks)
    try:  # torch without those probes: the kernel's CPU flags (Linux)
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def reuse_freed_memory() -> bool:
    """Keep the memory that glibc's ``malloc`` frees in the process, for later allocations.

    A training step frees and allocates the same tensor sizes every step. glibc's defaults give
    blocks above its mmap threshold, and free memory at the top of its heap, back to the kernel,
    so every step page-faults its activations in again: 600-1100 faults per step of the paper's
    model (batch 64, bf16) on the 2-core development VM, where that cost 3-20% of the step. Two
    ``mallopt`` settings stop that (what jemalloc and tcmalloc do by design): the mmap threshold
    goes to 1 GiB (32 MiB, glibc's historical maximum, where 1 GiB is refused) and the trim
    threshold to 2 GiB - 1. The process then keeps its heap: its resident size stays at least at
    the peak of a step instead of falling between steps, and fragmentation can keep more (a loop
    of one 40 MiB tensor per step held ~400 MiB). Results are unchanged (same numbers, same
    random draws); only where tensors live in memory changes. The CLI calls it in every process
    that parses the command line: each rank of ``ddp`` (Lightning's launcher), ``torchrun`` and
    SLURM, and the children forked from those; ranks started by ``ddp_spawn`` keep glibc's
    defaults.

    Returns:
        True when both settings took effect; False where the C library is not glibc (or not
        Linux), which changes nothing, or where glibc refused a setting.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        libc.gnu_get_libc_version  # glibc only (musl has a no-op mallopt)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mmap_set = mallopt(m_mmap_threshold, 1 << 30) == 1 or mallopt(m_mmap_threshold, 32 << 20) == 1
    trim_set = mallopt(m_trim_threshold, 2**31 - 1) == 1
    return mmap_set and trim_set


def config_dir(stage: str) -> Path:
    """Folder of the configs bundled for ``stage`` (``"finetune"`` or ``"pretrain"``)."""
    return Path(str(resources.files("avvp_lightning.configs"))) / stage


def bundled_configs(stage: str) -> list[str]:
    """Names of the bundled config files of ``stage``, without ``defaults.yaml``."""
    return sorted(p.name for p in config_dir(stage).glob("*.yaml") if p.name != "defaults.yaml")


# A config file's option groups that hold options (optimizer and lr_scheduler may also be a class name or
# null: none, as pretraining's saved configs have them).
SECTIONS = ("model", "data", "trainer", "run")


def check_config_file(path: str, subcommands: Collection[str] = ("fit", "validate", "test", "predict")) -> None:
    """DataError naming ``path`` when it is no config file: a folder, not UTF-8 text, not YAML, empty, or a
    section left empty (``model:`` with every line under it commented out), which would replace the
    options that the configs before it gave that section with the defaults, silently."""
    import yaml

    if os.path.isdir(path):
        raise DataError(f"--config {path}: a folder, not a config file")
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"--config {path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"--config {path}: cannot be read ({err.strerror or err})") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise DataError(f"--config {path}: not valid YAML ({problem}{where})") from None
    if content is None:
        raise DataError(f"--config {path}: empty config (no options in it); give options or leave this --config out")
    if not isinstance(content, dict):
        raise DataError(f"--config {path}: a config is a mapping of sections (model:, data:, trainer:, ...), "
                        f"got {type(content).__name__} {str(content)[:60]!r}")
    nested = [(f"{sub}.", content[sub]) for sub in subcommands if isinstance(content.get(sub), dict)]
    for prefix, block in [("", content), *nested]:
        for section in SECTIONS:
            if section in block and block[section] is None:
                raise DataError(f"--config {path}: section '{prefix}{section}' is empty (every line under it "
                                "commented out?), which would reset the options that earlier configs gave it to "
                                "the defaults; remove the line or give the section's options")
            if section in block and not isinstance(block[section], dict):
                raise DataError(f"--config {path}: section '{prefix}{section}' must hold options (key: value "
                                f"lines), got {block[section]!r}")


def _resolve_config(value: str, stage: str) -> str:
    if value.startswith(("{", "[")):
        return value  # inline YAML/JSON
    if os.path.isfile(value):
        check_config_file(value)
        return value
    name = value if value.endswith((".yaml", ".yml")) else value + ".yaml"
    candidate = config_dir(stage) / name
    if os.sep not in value and candidate.is_file():
        return str(candidate)  # a bundled name (also beside a folder of that name, such as a run's)
    if os.path.isdir(value):
        check_config_file(value)  # a folder: named as such
    if os.sep in value:
        return value  # a path that is not there, or inline YAML such as 'data: {root: /x}': the parser's
    raise DataError(
        f"config {value!r}: no such file, and no bundled {stage} config of that name. "
        f"Bundled: {', '.join(bundled_configs(stage))}"
    )


def _nested_by_subcommand(path: str, subcommands: Collection[str]) -> bool:
    """Whether the config file at ``path`` has only subcommand keys (``fit: {...}``), as a top-level one needs."""
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return True  # unreadable: let the parser report it
    return isinstance(content, dict) and set(content) <= {*subcommands, "subcommand"}


def resolve_config_args(args: list[str], stage: str, subcommands: Collection[str] = ()) -> list[str]:
    """Map bare ``--config NAME`` (or ``-c NAME``) arguments to the stage's bundled config files.

    With ``subcommands``, a config given before the subcommand (``avvp-finetune --config han.yaml
    fit``) is a :class:`DataError` unless the file is nested by subcommand (``fit: {...}``): the
    parser would read a flat file's keys as subcommand names and ignore them, training the default
    model without a word.
    """
    out: list[str] = []
    seen_subcommand = False
    i = 0
    while i < len(args):
        arg, value = args[i], None
        if arg in ("--config", "-c") and i + 1 < len(args):
            value = _resolve_config(args[i + 1], stage)
            out += [arg, value]
            i += 2
        else:
            if arg.startswith("--config="):
                value = _resolve_config(arg.split("=", 1)[1], stage)
                arg = "--config=" + value
            # (the first word is where the subcommand goes: a misspelt one is the parser's "invalid choice")
            seen_subcommand = seen_subcommand or arg in subcommands or not arg.startswith("-")
            out.append(arg)
            i += 1
        if value is not None and subcommands and not seen_subcommand and not value.startswith(("{", "[")) \
                and not _nested_by_subcommand(value, subcommands):
            raise DataError(f"--config {value}: give it after the subcommand (avvp-{stage} fit --config ...); "
                            "before it, only a file nested by subcommand (fit: ...) applies")
    return out


# A full disk, a read-only or forbidden place: the environment, not a bug; one line from the command line.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def check_writable(folder: Path, what: str = "the run folder", option: str = "--run.output_dir") -> None:
    """DataError unless ``folder`` exists as a writable folder or can be made (its nearest existing parent is)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{folder}: cannot make {what}: {existing} is not a folder (give another {option})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{folder}: cannot write {what}: {existing} is not writable (give another {option})")


def check_output_folder(subcommand: str, folder: Path) -> None:
    """DataError when ``folder`` (``--model.output_dir``) cannot be written, or ``predict`` would mix into a test's.

    Both write ``pred_audio.csv`` and ``pred_visual.csv``; a test also ``metrics.json`` (last),
    which ``avvp-ablate`` and ``avvp-report`` read with the predictions beside it, and a predict
    ``probabilities.npz``: a predict there would leave the test's numbers beside other
    predictions. (A test may replace a predict's CSVs, say after a test that stopped before its
    ``metrics.json``.)
    """
    check_writable(folder, f"the {subcommand} output folder", "--model.output_dir")
    if subcommand == "predict" and (folder / "metrics.json").is_file():
        raise DataError(f"--model.output_dir {folder}: holds a test's outputs (metrics.json); predict would replace "
                        "its prediction CSVs; give a folder of its own")


@contextmanager
def command_line_errors(args: ArgsType, prog: str) -> Iterator[None]:
    """Report a :class:`DataError` (or Lightning's ``MisconfigurationException``) as one ``<prog>: error: <message>``
    line, exit status 2.

    Only in command-line use (``args`` None, as the console scripts call ``main()``); a
    ``main(args)`` called from Python gets the exception. Status 2 is also what the argument
    parser exits with on a bad option.
    """
    if args is not None:
        yield
        return
    try:
        yield
    except DataError as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except MisconfigurationException as err:  # Lightning refusing options mid-run (a scheduler's unknown monitor)
        print(f"{prog}: error: {err} (Lightning refused the configuration; files written before are kept)",
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {where}{err.strerror or err} (files written before are kept)", file=sys.stderr,
              flush=True)
        raise SystemExit(1) from None


class _ConfiguredOptimizers:
    """A model's ``configure_optimizers`` from the command line's optimizer and scheduler, picklable.

    LightningCLI sets ``model.configure_optimizers`` to a ``functools.partial`` bound to the
    model; pickling turns a bound method back into the class's own method, so the processes of
    ``ddp_spawn`` got the model without an optimizer ("No configure_optimizers() method
    defined"). This object pickles with its optimizer, whose parameters stay the model's.
    """

    def __init__(self, model: Any, configure: Any, optimizer: Any, lr_scheduler: Any) -> None:
        self.model, self.configure, self.optimizer, self.lr_scheduler = model, configure, optimizer, lr_scheduler
        self.__wrapped__ = configure  # what Lightning's ``is_overridden`` inspects

    def __call__(self) -> Any:
        """The optimizer and scheduler in Lightning's form (LightningCLI's ``configure_optimizers``)."""
        return self.configure(self.model, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # In an unpickled copy (a ddp_spawn process) the scheduler no longer wraps the optimizer's
        # step, and torch warns at every scheduler step that the step was overridden. The
        # schedule itself is unaffected (tested), so that one warning is silenced there.
        self.__dict__.update(state)
        warnings.filterwarnings("ignore", message=r"Seems like `optimizer.step\(\)` has been overridden")


class RunRecorder(Callback):
    """Writes the run record (``run.json``) once the data has loaded, on rank zero.

    The CLI prepares the record before the run; writing it only when the datamodule's ``setup``
    has succeeded keeps a run that fails on bad data (one ``error:`` line) from replacing the
    record of the earlier good run whose checkpoints are in the same folder. A ``fit`` that
    continues the folder's own checkpoint (``resumed``) adds itself to the earlier record; a new
    ``fit`` in a folder that holds an earlier run first moves that run's results aside
    (:func:`retire_earlier_run`), so none of them is mixed with the new run's or lost.
    """

    def __init__(self) -> None:
        self.record: Optional[dict[str, Any]] = None
        self.resumed = False
        self.data_loaded = False  # (callbacks' setup runs after the datamodule's)

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:  # noqa: D102
        self.data_loaded = True
        if self.record is None or not trainer.is_global_zero:
            return
        if self.record["subcommand"] == "fit" and smoke_over_earlier_run(trainer):
            print(f"a fit that writes no checkpoints (fast_dev_run, or checkpointing off): the earlier run in "
                  f"{trainer.default_root_dir} is left as it is, its run.json and config-fit.yaml too", flush=True)
            return
        if self.record["subcommand"] == "fit" and not self.resumed:
            # This fit's own W&B runs, by id (made by now; in a ddp_spawn worker the run is re-attached
            # and its .dir names the working folder, not the run folder)
            current = {str(logger.experiment.id) for logger in trainer.loggers if type(logger).__name__ == "WandbLogger"}
            moved = retire_earlier_run(Path(trainer.default_root_dir), keep=current)
            if moved is not None:
                warnings.warn(f"{trainer.default_root_dir} held an earlier run: its checkpoints and results are now "
                              f"in {moved} (to continue that run rather than start this one, stop this fit and fit "
                              f"with --ckpt_path {moved / 'checkpoints' / 'last.ckpt'})", stacklevel=1)
        path = runinfo.write_run_record(trainer.default_root_dir, self.record, resumed=self.resumed)
        if self.record["subcommand"] == "test":
            print(f"{runinfo.format_record(self.record)}\nrun record: {path}", flush=True)


# What an earlier run leaves in its folder that a new fit there would overwrite or contradict.
EARLIER_RUN = ("checkpoints", "test", "predict", "run.json", "config-fit.yaml", "config-validate.yaml",
               "config-test.yaml", "config-predict.yaml")


def _holds_run(run_dir: Path) -> bool:
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.glob("*.ckpt"))


def smoke_over_earlier_run(trainer: Trainer) -> bool:
    """A fit that writes no checkpoints (a smoke test) in a folder that holds an earlier run's."""
    smoke = bool(trainer.fast_dev_run) or not trainer.checkpoint_callbacks
    return smoke and _holds_run(Path(trainer.default_root_dir))


def retire_earlier_run(run_dir: Path, keep: Optional[set[str]] = None) -> Optional[Path]:
    """Move an earlier run's checkpoints and results into ``<run_dir>/previous/<UTC time>/``.

    Nothing happens (None) unless the folder holds a checkpoint. Its W&B runs
    (``wandb/offline-run-*``, ``wandb/run-*``) move too, but those whose id is in ``keep`` (this fit's own),
    so that ``wandb sync`` of the folder uploads the new run alone under its name and group. The
    CSV logs stay: they are kept per invocation anyway (``csv/version_N``).
    """
    if not _holds_run(run_dir):
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = run_dir / "previous" / stamp
    suffix = 1
    while target.exists():
        suffix += 1
        target = run_dir / "previous" / f"{stamp}-{suffix}"
    target.mkdir(parents=True)
    for name in EARLIER_RUN:
        if (run_dir / name).exists():
            os.replace(run_dir / name, target / name)
    wandb_dir = run_dir / "wandb"
    earlier = [p for p in (wandb_dir.iterdir() if wandb_dir.is_dir() else ())
               if p.name.startswith(("offline-run-", "run-")) and p.is_dir() and p.name.rsplit("-", 1)[-1] not in (keep or set())]
    for folder in earlier:
        (target / "wandb").mkdir(exist_ok=True)
        os.replace(folder, target / "wandb" / folder.name)
    return target


# A resumed fit must keep these options (dotted prefixes) as its run began; others (max_epochs, devices,
# workers, logging, where the data lives) may change. Precision may too: it follows the hardware. The
# decision threshold is kept: in fit it decides the validation score that picks best.ckpt.
RUN_DEFINING = ("seed_everything", "model.", "optimizer", "lr_scheduler", "data.", "trainer.accumulate_grad_batches",
                "trainer.gradient_clip_val", "trainer.gradient_clip_algorithm", "trainer.limit_train_batches",
                "trainer.overfit_batches")
FREE_ON_RESUME = ("model.output_dir", "model.cuda_graphs", "data.root", "data.num_workers",
                  "data.store", "data.device_resident", "data.predict_split", "data.pool_visual")


# Per subcommand, the Trainer options whose value 0 runs nothing: (option, what the command does, advice).
# A command that runs nothing would still replace the run's record (and fit move an earlier run aside).
_LIMIT_ADVICE = "and would replace the run's record; give a number of batches >= 1 or a fraction"
RUNS_NOTHING = {
    "fit": (("max_epochs", "trains", "give 1 or more, or -1 for no limit with --trainer.max_steps"),
            ("max_steps", "trains", "give 1 or more, or -1 for no limit"),
            ("limit_train_batches", "trains", _LIMIT_ADVICE)),
    "validate": (("limit_val_batches", "scores", _LIMIT_ADVICE),),
    "test": (("limit_test_batches", "scores", _LIMIT_ADVICE),),
    "predict": (("limit_predict_batches", "predicts", _LIMIT_ADVICE),),
}


def defining_changes(before: dict[str, Any], after: dict[str, Any],
                     keys: tuple[str, ...] = RUN_DEFINING) -> dict[str, list[Any]]:
    """:func:`~avvp_lightning.runinfo.config_changes` of the options ``keys`` (prefixes), less :data:`FREE_ON_RESUME`."""
    return {key: change for key, change in runinfo.config_changes(before, after).items()
            if key.startswith(keys) and not key.startswith(FREE_ON_RESUME)}


def _file_identity(path: Path) -> Optional[tuple[int, int]]:
    """(inode, mtime in ns) of a file, None when there is none: a file replaced since has another."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def checkpoint_options(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The options a Lightning checkpoint records, as a config: ``{"model": hparams, "data": hparams}``."""
    return {section: {k: v for k, v in (checkpoint.get(key) or {}).items() if not str(k).startswith("_")}
            for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters"))}


def check_resume(run_dir: Path, fit: dict[str, Any], config: dict[str, Any],
                 fingerprint: Optional[dict[str, Any]]) -> None:
    """DataError when a fit resumed from its own checkpoint has options or data other than its run's.

    The checkpoint's optimizer and scheduler state would win over a changed learning rate or
    schedule, the record would describe a run that never happened, and another optimizer class
    fails at the first step; so a resume repeats the run's options (``config-fit.yaml``).
    """
    recorded = runinfo.flatten_config(fit.get("config") or {})  # options older versions lacked are not compared
    bad = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in defining_changes(recorded, config).items()
           if key in recorded]
    trained_on = fit.get("data")
    if trained_on and fingerprint and not runinfo.same_data(trained_on, fingerprint):
        bad.append(f"data sha256 {trained_on['sha256'][:12]}... -> {fingerprint['sha256'][:12]}... (other CSVs "
                   "or feature files)")
    if bad:
        shown = "; ".join(bad[:6]) + (f"; and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise DataError(f"--ckpt_path: resuming the run in {run_dir} with options or data other than it began "
                        f"with: {shown}. A resume continues the run as it was (only --trainer.max_epochs and "
                        "settings that do not change the training, such as devices, workers or logging, may "
                        f"differ): repeat its options ({run_dir / 'config-fit.yaml'}), or start a new run in "
                        "another folder (--run.name, --run.output_dir)")


def _wandb_files(run: Any, run_dir: Path) -> Optional[Path]:
    """The files folder of a W&B run: its ``dir``, or (a run re-attached in a ``ddp_spawn`` worker,
    whose ``dir`` names the working folder) the one of its id under ``<run_dir>/wandb``; None if neither."""
    files = Path(run.dir)
    if files.is_dir():
        return files
    found = sorted((run_dir / "wandb").glob(f"*-{run.id}/files"))
    return found[0] if found else None


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run folder and into the W&B run.

    Lightning's default writes ``config.yaml`` to the logger's folder, where a second
    subcommand of the same run would collide; here each subcommand gets its own file
    (``config-fit.yaml``, ``config-test.yaml``, ...), overwritten on resume. The file is meant to
    be fed back (``--config config-fit.yaml``), so it leaves out what the CLI filled in for this
    run folder: ``trainer.default_root_dir`` when it is the one ``--run.*`` gives (fed back, it
    would write into this folder whatever ``--run.output_dir`` says), and ``fit``'s ``ckpt_path``
    (a resume point, not part of the run; ``run.json`` records it).
    """

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        name = getattr(stage, "value", stage)  # a TrainerFn: "fit", "test", ...
        if name == "fit" and smoke_over_earlier_run(trainer):  # the earlier run's config stays (RunRecorder)
            return
        path = run_dir / f"config-{name}.yaml"
        config = self.config.clone()
        run = config.get("run")
        if run is not None and config.trainer.default_root_dir == str(
                Path(run.output_dir) / run.name / f"seed{config.seed_everything}"):
            config.trainer.default_root_dir = None
        if name == "fit":
            config.ckpt_path = None
        self.parser.save(config, str(path), skip_none=False, overwrite=True)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                import yaml

                logger.experiment.config.update(yaml.safe_load(path.read_text()), allow_val_change=True)
                # A copy in the run's files folder (uploaded with the run; W&B's save() would link the
                # file, and a later fit or test in this folder would change what the link shows)
                files = _wandb_files(logger.experiment, run_dir)
                if files is not None:
                    shutil.copy2(path, files / path.name)


class AVVPCLI(LightningCLI):
    """LightningCLI with bundled configs, a run folder per (name, seed) and offline W&B."""

    stage: str = ""
    description: str = ""
    monitor: str = ""  # logged value that picks best.ckpt
    monitor_mode: str = "max"
    auto_precision: bool = False  # unset --trainer.precision -> bf16-mixed where native, else 32-true
    epilog: str = ""  # top-level --help, after the subcommands (e.g. a command handled before LightningCLI)
    job_prefix: str = ""  # W&B job_type = job_prefix + subcommand
    lr_option: str = "--optimizer.lr"  # the learning rate on the command line (named when training diverges)

    def __init__(self, model_class: type, datamodule_class: type, args: ArgsType = None, **kwargs: Any) -> None:
        if args is None:
            # Rewrite sys.argv rather than passing args, which LightningCLI warns about.
            sys.argv[1:] = resolve_config_args(sys.argv[1:], self.stage, self.subcommands())
        elif isinstance(args, (list, tuple)):
            args = resolve_config_args([str(a) for a in args], self.stage, self.subcommands())
        self.command = [f"avvp-{self.stage}", *(sys.argv[1:] if args is None else map(str, args))]  # for run.json
        # The subcommand asked for, when the command line starts with it: only its parser is built in
        # full (each takes ~0.25 s of jsonargparse's signature reading); the others stay bare.
        self._only_subcommand = (self.command[1] if (args is None or isinstance(args, (list, tuple)))
                                 and self.command[1:2] and self.command[1] in self.subcommands() else None)
        os.environ.setdefault("WANDB_SILENT", "true")
        defaults = str(config_dir(self.stage) / "defaults.yaml")
        description = (
            f"{self.description}\n\nBundled configs (give a bare name to --config, after "
            f"the subcommand; defaults.yaml is always loaded first): {', '.join(bundled_configs(self.stage))}"
        )
        parser_kwargs: dict[str, Any] = {"description": description}
        if self.epilog:
            parser_kwargs["epilog"] = self.epilog
        for sub in self.subcommands():
            parser_kwargs[sub] = {"default_config_files": [defaults], "description": description}
        super().__init__(
            model_class,
            datamodule_class,
            args=args,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            seed_everything_default=0,
            parser_kwargs=parser_kwargs,
            **kwargs,
        )

    # ----------------------------------------------------------------- arguments
    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--run.name", type=str, default="default",
                            help="Run name: outputs go to <run.output_dir>/<run.name>/seed<seed>/; also the W&B run name.")
        parser.add_argument("--run.group", type=Optional[str], default=None,
                            help="W&B group (the table row); defaults to run.name.")
        parser.add_argument("--run.tags", type=list[str], default=[], help="W&B tags (the row's components).")
        parser.add_argument("--run.project", type=str, default="avvp-lightning", help="W&B project.")
        parser.add_argument("--run.output_dir", type=str, default="outputs", help="Root folder of all runs.")
        parser.add_argument("--run.wandb", type=Optional[Literal["offline", "online", "disabled"]], default=None,
                            help="W&B mode; default: $WANDB_MODE, else offline (no account, no network).")
        parser.add_argument("--run.reuse_memory", type=bool, default=True,
                            help="Linux/glibc: keep freed memory in the process for the next step's tensors "
                                 "instead of returning it to the kernel (fewer page faults: 3-20 percent "
                                 "faster CPU steps; resident memory stays at least at its peak). "
                                 "Results are unchanged.")

    SUBCOMMAND_HELP = {
        "fit": "Train a run (or resume it: --ckpt_path last); checkpoints, logs and configs in its run folder.",
        "validate": "Score a checkpoint (--ckpt_path best|last|FILE) on the validation set.",
        "test": "Score a checkpoint (--ckpt_path best|last|FILE) on the test set; metrics and prediction CSVs.",
        "predict": "Parse the videos of a split or a list (--data.predict_split) with a checkpoint; prediction "
                   "CSVs and probabilities.",
    }

    def _add_subcommands(self, parser: Any, **kwargs: Any) -> None:
        """LightningCLI's subcommands, described as they work here (Lightning's first docstring lines were cut)."""
        for name, text in self.SUBCOMMAND_HELP.items():
            kwargs.setdefault(name, {}).setdefault("description", text)
        super()._add_subcommands(parser, **kwargs)
        for action in parser._actions:
            for choice in getattr(action, "_choices_actions", ()):
                if choice.dest in self.SUBCOMMAND_HELP:
                    choice.help = self.SUBCOMMAND_HELP[choice.dest]

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        """LightningCLI's subcommand parser, with help that says what these options do here."""
        if self._only_subcommand not in (None, subcommand):  # not asked for: listed, never parsed
            return LightningArgumentParser(description=kwargs.get("description"))
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        helps = {
            "config": "A config file (YAML), or the bare name of a bundled one; several are applied in order, "
                      "after defaults.yaml. Give it after the subcommand.",
            "seed_everything": "Seed of the run (an int; default 0; true: a random one): weights, data order and "
                               "dropout; the run folder is <run.output_dir>/<run.name>/seed<seed>.",
            "ckpt_path": ("'last' (or 'best', or one of this run's checkpoint files) resumes this run; give the "
                          "options it began with again (a change is an error). Another run's checkpoint file "
                          "continues that training here as a new run. Without: a new run." if subcommand == "fit" else
                          "Required: 'best' or 'last' (this run's checkpoints/best.ckpt, last.ckpt) or a "
                          "checkpoint file."),
            "weights_only": "Load the checkpoint with torch.load(weights_only=True) (the default, also when "
                            "unset); false only for a file you trust as code.",
        }
        if self.auto_precision:
            helps["trainer.precision"] = (
                "32-true, bf16-mixed, 16-mixed, bf16-true, 64-true. Unset (the default): "
                + ("bf16-mixed where the hardware runs bfloat16 natively (a CUDA GPU with bf16, a CPU with "
                   "AVX512-BF16 or AMX), else 32-true; the choice is printed." if subcommand == "fit" else
                   "32-true, so that evaluated numbers do not depend on the hardware."))
        for action in parser._actions:
            if action.dest in helps:
                action.help = helps[action.dest]
        return parser

    def _add_configure_optimizers_method_to_model(self, subcommand: Optional[str]) -> None:
        """LightningCLI's optimizer set-up, with a ``configure_optimizers`` that survives pickling (``ddp_spawn``)."""
        super()._add_configure_optimizers_method_to_model(subcommand)
        bound = vars(self.model).get("configure_optimizers")
        if isinstance(bound, MethodType) and isinstance(bound.__func__, partial):
            fn = bound.__func__
            self.model.configure_optimizers = _ConfiguredOptimizers(
                self.model, fn.func, fn.keywords["optimizer"], fn.keywords["lr_scheduler"])
            if fn.keywords["lr_scheduler"] is not None:
                self._probe_lr_scheduler(fn.keywords["optimizer"])

    def _probe_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> None:
        """Step a copy of the configured scheduler a few times on a one-number optimizer.

        torch checks few scheduler arguments when it builds one: ``StepLR`` with ``step_size 0``
        (or ``CosineAnnealingLR`` with ``T_max 0``) divides by zero only at its first step, the
        end of the first epoch, in a traceback. The probe makes that one ``error:`` line before
        anything runs. Only arithmetic failures are reported (a probe's other errors may not be the
        run's: ``OneCycleLR`` with ``total_steps 2`` refuses a third step that 2 epochs never take);
        a scheduler that steps on a metric (``ReduceLROnPlateau``) is not probed.
        """
        init = self._get(self.config_init, "lr_scheduler")
        probe_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                    lr=float(optimizer.param_groups[0]["lr"]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = instantiate_class(probe_opt, init)
                if isinstance(probe, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    return
                for _ in range(3):
                    probe_opt.step()
                    probe.step()
        except ArithmeticError as err:
            args = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(init.get("init_args") or {}).items()))
            raise DataError(f"invalid option value: --lr_scheduler: {init['class_path'].rsplit('.', 1)[-1]}"
                            f"({args}) fails within its first steps: {err}") from None
        except Exception:  # noqa: BLE001 - no verdict: the probe differs from the run (OneCycleLR's total_steps 2)
            return

    def _set_seed(self) -> None:
        """Lightning's seeding; a seed numpy refuses (``--seed_everything -1``) is one ``error:`` line."""
        try:
            super()._set_seed()
        except ValueError as err:
            raise DataError(f"invalid option value: --seed_everything: {err}") from None

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; an option value they refuse is one ``error:`` line.

        The modules check their arguments in ``__init__`` and raise ``ValueError`` (say
        ``--model.num_heads 3`` for a width of 512); from the command line that is a
        :class:`DataError`, reported like any other bad input instead of a traceback.
        """
        try:
            super().instantiate_classes()
        except DataError:  # a ValueError too, already worded
            raise
        except (ValueError, MisconfigurationException) as err:  # the latter: Trainer options (devices 0, ...)
            raise DataError(f"invalid option value: {err}") from err

    def _parse_ckpt_path(self) -> None:
        """Keep the config's model: a checkpoint's hyperparameters never override it.

        LightningCLI would copy the model hyperparameters of an explicit ``--ckpt_path`` file over
        the parsed config, silently replacing values given on the command line (a test-time
        ``--model.threshold``, or ``--config han`` naming a run of another architecture). Here the
        config decides for every checkpoint path alike, and :meth:`start_run` rejects a
        checkpoint whose weights do not fit the configured model, naming the mismatch.
        """

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; when it fails, remove the log folders it left empty.

        Lightning creates ``csv/version_N`` and the W&B run as a run starts, before the data is
        read, so a run stopped by bad input would leave an empty CSV folder (the next run would log
        to ``version_N+1``) and an empty offline W&B run (which ``wandb sync`` would upload). Both
        go, and so do the run folders this command made, when empty. Folders holding anything (a
        resumed run's logs), and W&B runs of commands whose data had loaded, are kept; so are all
        W&B runs where the data loads in other processes (``ddp_spawn``: this process cannot see
        how far they got).
        """
        open_before = getattr(sys.modules.get("wandb"), "run", None)  # a caller's own W&B run, which Lightning reuses
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            logger = getattr(self, "csv_logger", None)  # this tool's own (make_loggers), never a user's
            with suppress(Exception):  # never hide the run's own error
                for folder in ([Path(logger.log_dir), Path(logger.root_dir)] if logger is not None else []):
                    if folder.is_dir() and not any(folder.iterdir()):  # csv/version_N, then csv
                        folder.rmdir()
            unstarted: Optional[list[Path]] = None  # this command's offline W&B run folders, when its data never loaded
            with suppress(Exception):
                trainer, recorder = getattr(self, "trainer", None), getattr(self, "recorder", None)
                launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
                in_process = launcher is None or not isinstance(launcher, _MultiProcessingLauncher)
                if trainer is not None and recorder is not None and not recorder.data_loaded and in_process:
                    unstarted = [Path(lg._experiment.dir).parent for lg in trainer.loggers  # <run>/files -> <run>
                                 if type(lg).__name__ == "WandbLogger" and lg._offline and lg._experiment is not None
                                 and lg._experiment is not open_before]
            with suppress(Exception):
                self._finish_wandb(exit_code=1, callers=open_before)
            if unstarted is not None:
                with suppress(Exception):
                    self._remove_unstarted(unstarted)
            raise
        self._finish_wandb(exit_code=0, callers=open_before)

    def _remove_unstarted(self, wandb_runs: list[Path]) -> None:
        """Remove what a command stopped before its data loaded made: its offline W&B run folders,
        W&B's links to them (pointed back at the latest run left), and the folders it created
        (``before_instantiate_classes``) that are empty."""
        wandb_dir = self._run_root / "wandb"
        for folder in wandb_runs:
            if not (folder.name.startswith("offline-run-") and folder.is_dir()
                    and folder.parent.absolute() == wandb_dir):
                continue  # only W&B's own offline run folders, in this run's folder
            if folder.absolute() in self._wandb_before:
                continue  # there before this command (a W&B run id given twice, as $WANDB_RUN_ID can)
            shutil.rmtree(folder)
            runs = sorted((p for p in wandb_dir.iterdir() if p.is_dir() and not p.is_symlink()
                           and re.match(r"(offline-)?run-\d{8}_\d{6}-", p.name)),
                          key=lambda p: re.search(r"\d{8}_\d{6}", p.name)[0])
            for name in ("latest-run", "debug.log", "debug-internal.log"):  # W&B's links, when they dangle now
                link = wandb_dir / name
                if link.is_symlink() and not link.exists():
                    link.unlink()
                    if runs:
                        latest = Path(runs[-1].name)
                        link.symlink_to(latest if name == "latest-run" else latest / "logs" / name)
        for folder in [wandb_dir] * self._wandb_dir_made + self._made_folders:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def _finish_wandb(self, exit_code: int, callers: Any = None) -> None:
        """Close the W&B run this command started: Lightning leaves it open, and the next command
        in the same process (``avvp-ablate``, a notebook, the tests) would log into it. A run the
        caller had open before (``callers``, which Lightning reused) stays open: it is the caller's."""
        wandb = sys.modules.get("wandb")
        loggers = getattr(getattr(self, "trainer", None), "loggers", None) or []
        ours = [logger for logger in loggers if type(logger).__name__ == "WandbLogger"]
        run = getattr(wandb, "run", None)
        if wandb is not None and run is not None and run is not callers and ours:
            wandb.finish(exit_code=exit_code)
            for logger in ours:  # a trainer used again (a notebook) starts a new run instead of a finished one
                logger._experiment = None

    # ----------------------------------------------------------------- run folder
    def run_dir(self) -> Path:
        cfg = self.config[self.subcommand]
        return Path(cfg.run.output_dir) / cfg.run.name / f"seed{cfg.seed_everything}"

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        name = str(cfg.run.name)
        if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
            raise DataError(f"--run.name {name!r}: a plain name is needed (the run folder is "
                            "<run.output_dir>/<run.name>/seed<seed>), not a path or an empty name")
        for option, does, advice in RUNS_NOTHING.get(self.subcommand, ()):  # 0 of them: nothing would run
            if cfg.trainer.get(option) is not None and cfg.trainer.get(option) == 0:
                raise DataError(f"invalid option value: --trainer.{option} {cfg.trainer.get(option)} {does} nothing "
                                f"({advice})")
        if cfg.get("ckpt_path") is not None and not str(cfg.get("ckpt_path")).strip():
            raise DataError(f"--ckpt_path {cfg.get('ckpt_path')!r}: empty (an unset variable?); give best, last or a "
                            "checkpoint file")
        if cfg.run.reuse_memory:
            reuse_freed_memory()
        if cfg.trainer.default_root_dir is None:
            cfg.trainer.default_root_dir = str(self.run_dir())
        root = Path(cfg.trainer.default_root_dir).absolute()
        self._made_folders = [p for p in (root, *root.parents) if not p.exists()]  # what a failed start may remove
        self._run_root = root
        self._wandb_before = {p.absolute() for p in (root / "wandb").glob("offline-run-*")}  # and may not
        self._wandb_dir_made = not (root / "wandb").exists()
        check_writable(Path(cfg.trainer.default_root_dir))  # before the data loads, not after
        output_dir = getattr(cfg.get("model"), "output_dir", None)
        if output_dir and self.subcommand in ("test", "predict"):
            check_output_folder(self.subcommand, Path(output_dir))
        if self.auto_precision and cfg.trainer.precision is None:
            cfg.trainer.precision = self.auto_precision_choice(cfg.trainer.accelerator, cfg.trainer.strategy)
            rank_zero_info(f"precision: {cfg.trainer.precision} (auto; --trainer.precision overrides)")
        ckpt = cfg.get("ckpt_path")
        if ckpt is None and self.subcommand in ("validate", "test", "predict"):
            raise DataError(f"{self.subcommand} needs --ckpt_path: best or last (this run's checkpoints) or a "
                            "checkpoint file; without one it would score an untrained model and replace the "
                            "run's results")
        if ckpt in ("best", "last"):
            path = Path(cfg.trainer.default_root_dir) / "checkpoints" / f"{ckpt}.ckpt"
            run_dir = path.parents[1]
            if path.is_file():
                cfg.ckpt_path = str(path)
                return
            earlier = sorted(run_dir.glob(f"previous/*/checkpoints/{ckpt}.ckpt"))  # runs moved aside
            if self.subcommand == "fit" and ckpt == "last":
                moved = (f" (the latest earlier run's last.ckpt, moved aside by a later fit here, is {earlier[-1]}: "
                         "give that path to continue it)" if earlier else "")
                warnings.warn(f"--ckpt_path last: {path} does not exist; training from scratch{moved}.", stacklevel=1)
                cfg.ckpt_path = None
            else:
                if ckpt == "best" and (run_dir / "checkpoints" / "last.ckpt").is_file():  # trained, never validated
                    hint = ("; this run has checkpoints/last.ckpt but no best.ckpt: it never validated (no "
                            "validation videos, or validation turned off); use --ckpt_path last")
                elif earlier:
                    hint = f"; the latest earlier run's is {earlier[-1]} (a later fit in this folder moved it aside)"
                else:
                    hint = ""
                raise DataError(f"--ckpt_path {ckpt}: {path} does not exist (train first with the same "
                                f"--config/--run.name/--seed_everything, or give a checkpoint path){hint}.")

    def auto_precision_choice(self, accelerator: Any, strategy: Any) -> str:
        """``bf16-mixed`` for ``fit`` on native-bf16 hardware, else ``32-true``.

        Evaluation (validate, test, predict) stays in float32, so reported numbers do not depend
        on the hardware. Fork-based strategies (``ddp_fork``, ``ddp_notebook``) are not probed
        for CUDA, which would initialise it before the fork.
        """
        if self.subcommand != "fit" or not isinstance(accelerator, str):
            return "32-true"
        forks = isinstance(strategy, str) and ("fork" in strategy or "notebook" in strategy)
        if forks and _picks_cuda(accelerator):
            return "32-true"
        return "bf16-mixed" if native_bf16(accelerator) else "32-true"

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        root = Path(trainer_cfg.get("default_root_dir") or self.run_dir())
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = self.make_loggers(root)
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if trainer_cfg.get("enable_checkpointing", True) is not False:
            callbacks += self.stage_callbacks(root)
        self.recorder = RunRecorder()
        kwargs["callbacks"] = callbacks + [RngStateCallback(), DivergenceStop(self.lr_option), self.recorder]
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]  # a kill mid-save keeps the old file
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------ before/after each run
    def before_fit(self) -> None:
        self.start_run()

    def before_validate(self) -> None:
        self.start_run()

    def before_test(self) -> None:
        self.start_run()
        self._metrics_before = _file_identity(self._metrics_file())

    def before_predict(self) -> None:
        self.start_run()

    def start_run(self) -> None:
        """Check the checkpoint against the model, then prepare the run record (``run.json``)."""
        sub = self.subcommand
        run_cfg = self.config_init[sub]
        ckpt_path = run_cfg.get("ckpt_path")
        trusted = run_cfg.get("weights_only") is False  # --weights_only false: the user vouches for the file
        if "weights_only" in run_cfg and run_cfg.get("weights_only") is None:
            run_cfg["weights_only"] = True  # Lightning would load a remote (URL) checkpoint unrestricted
        checkpoint = None
        if ckpt_path and "://" not in str(ckpt_path):
            checkpoint = check_checkpoint(ckpt_path, self.model, weights_only=not trusted)
        config = json.loads(self._parser(sub).dump(self.config[sub], format="json", skip_none=False))
        fingerprint = self.data_fingerprint()
        run_dir = Path(self.trainer.default_root_dir)
        fit = runinfo.read_run_records(run_dir).get("fit")
        if sub == "fit" and ckpt_path and "://" not in str(ckpt_path) \
                and Path(ckpt_path).resolve().parent == (run_dir / "checkpoints").resolve():
            self.recorder.resumed = True  # this run's own checkpoint: the run continues as it began
            if isinstance(fit, dict):
                check_resume(run_dir, fit, config, fingerprint)
            elif checkpoint is not None:  # run.json lost or damaged: the checkpoint's own record of the options
                given = runinfo.flatten_config(config)  # (its hparams also hold model.*_dim, linked from data.*)
                recorded = {k: v for k, v in runinfo.flatten_config(checkpoint_options(checkpoint)).items()
                            if k in given}
                check_resume(run_dir, {"config": recorded}, config, None)
        elif sub in ("validate", "test") and isinstance(fit, dict) and fit.get("data") and fingerprint is not None:
            if not runinfo.same_data(fit["data"], fingerprint):
                warnings.warn(f"{sub} on data other than this run's fit (data sha256 {fingerprint['sha256'][:12]}..., "
                              f"fit {fit['data']['sha256'][:12]}...: see {run_dir / runinfo.RUN_FILE}); its results "
                              f"replace those in {run_dir}", stacklevel=1)
        if sub == "fit" and checkpoint is not None:  # (after the resume check, whose message names the run's options)
            check_training_state(ckpt_path, checkpoint, self.model)
        if sub in ("validate", "test", "predict") and isinstance(fit, dict) and ckpt_path \
                and "://" not in str(ckpt_path) and Path(ckpt_path).resolve().parent != (run_dir / "checkpoints").resolve():
            warnings.warn(f"{sub} of a checkpoint from outside this run ({ckpt_path}), in the folder of a run that "
                          f"has its own fit ({run_dir}): its outputs and record replace that run's; give "
                          "--run.name (or --run.output_dir) to keep them apart", stacklevel=1)
        seed = os.environ.get("PL_GLOBAL_SEED")
        self.recorder.record = runinfo.run_record(  # written once the data has loaded (RunRecorder)
            sub, int(seed) if seed is not None else None, config, fingerprint,
            str(ckpt_path) if ckpt_path else None, command=self.command)

    def data_fingerprint(self) -> Optional[dict[str, Any]]:
        """Fingerprint of the datamodule's root and ``*_dir`` feature folders (None without a root)."""
        datamodule = self.datamodule
        try:
            root = getattr(datamodule, "root", None)
        except DataError:  # an unusable root is reported by the datamodule's own checks
            return None
        if root is None:
            return None
        hparams = dict(getattr(datamodule, "hparams", {}) or {})
        folders = {k.removesuffix("_dir"): v for k, v in hparams.items() if k.endswith("_dir") and isinstance(v, str)}
        store_path = getattr(datamodule, "store_path", None)  # the LLP datamodule's packed store
        record = runinfo.data_fingerprint(root, folders, store_path() if callable(store_path) else None)
        if not record["csv"] and "store" not in record and all(f.get("missing") for f in record["features"].values()):
            return None  # no data there: the datamodule's checks name the root, not "other data than the fit's"
        return record

    def _metrics_file(self) -> Path:
        """The ``metrics.json`` that the model's test writes."""
        hparams = getattr(self.model, "hparams", {}) or {}
        return Path(hparams.get("output_dir") or Path(self.trainer.default_root_dir) / "test") / "metrics.json"

    def after_test(self) -> None:
        """Add the run record to ``metrics.json`` when this test wrote it (not to an earlier test's)."""
        metrics = self._metrics_file()
        written = _file_identity(metrics)
        if written is not None and written != getattr(self, "_metrics_before", None) and self.recorder.record is not None:
            runinfo.add_to_json(metrics, "run", self.recorder.record)

    def stage_callbacks(self, run_dir: Path) -> list[Callback]:
        """``checkpoints/best.ckpt`` (best ``monitor``) and ``checkpoints/last.ckpt`` (every epoch).

        ``last.ckpt`` has its own unmonitored callback: Lightning 2.6's ``save_last=True`` rewrites
        it only when a top-k checkpoint is saved (the monitored score improved), so a resume with
        ``--ckpt_path last`` could go back many epochs. It saves at each training epoch's end (after
        that epoch's validation), also with ``--trainer.check_val_every_n_epoch`` above 1, where
        Lightning would save only after validations. Both keep their record when the run folder
        moves (:class:`~avvp_lightning.checkpointing.RunCheckpoint`).
        """
        folder = str(run_dir / "checkpoints")
        return [
            RunCheckpoint(dirpath=folder, filename="best", monitor=self.monitor, mode=self.monitor_mode,
                          save_top_k=1, enable_version_counter=False),
            RunCheckpoint(dirpath=folder, filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, monitor=None,
                          save_top_k=1, every_n_epochs=1, enable_version_counter=False,
                          save_on_train_epoch_end=True),
        ]

    def make_loggers(self, run_dir: Path) -> list[Logger]:
        cfg = self.config[self.subcommand]
        # One CSV folder per invocation (csv/version_N), so a resumed fit keeps the old one; predict logs
        # nothing (its outputs are the prediction files), so it gets none.
        self.csv_logger = CSVLogger(save_dir=str(run_dir), name="csv") if self.subcommand != "predict" else None
        loggers: list[Logger] = [self.csv_logger] if self.csv_logger is not None else []
        mode = cfg.run.wandb or os.environ.get("WANDB_MODE") or "offline"
        if mode == "disabled":
            return loggers
        try:
            from pytorch_lightning.loggers import WandbLogger
        except ImportError:  # pragma: no cover - wandb is a dependency
            return loggers
        os.environ.setdefault("WANDB_MODE", "offline" if mode != "online" else "online")
        loggers.append(
            WandbLogger(
                project=cfg.run.project,
                name=f"{cfg.run.name}-seed{cfg.seed_everything}",
                group=cfg.run.group or cfg.run.name,
                tags=list(cfg.run.tags),
                job_type=self.job_prefix + self.subcommand,
                save_dir=str(run_dir),
                offline=mode != "online",
                # wandb.init's own argument: --run.wandb wins over $WANDB_MODE (and over the "dryrun"
                # that Lightning leaves there after an offline run in the same process)
                mode="online" if mode == "online" else "offline",
            )
        )
        init = getattr(loggers[-1], "_wandb_init", None)  # Lightning passes anonymous=None, which W&B >= 0.19
        if isinstance(init, dict) and init.get("anonymous") is None:  # warns about on every run
            init.pop("anonymous", None)
        return loggers
