"""``avvp-ablate``: train and test every (config, seed) of an ablation, resumably.

Examples::

    avvp-ablate --configs han,base,base_gcaa,base_adv_skip,base_adv_skip_gcaa --seeds 3 --data.root /data/llp
    avvp-ablate --configs han --seeds 2 --first_seed 2 --trainer.max_epochs 20   # seeds 2 and 3
    avvp-ablate --configs han,base --seeds 3 --dry_run                           # print the plan only
    avvp-report --output_dir outputs                                             # then the tables

Every argument that is not an option of ``avvp-ablate`` is passed unchanged to both
``avvp-finetune fit`` and ``avvp-finetune test`` (``--data.root``, ``--trainer.*``, an extra
``--config overrides.yaml``, ...). Each (config, seed) is one run folder
``<output_dir>/<config>/seed<seed>/``, where ``<config>`` is the config file's name without
``.yaml``; it is also the run's ``run.name`` and W&B group (the table row), and the config's
``run.tags`` are the W&B tags. A run:

* is skipped when ``test/metrics.json`` holds the ten numbers (the test stage writes it last,
  after the prediction CSVs, so a complete file means the run finished);
* else trains with ``avvp-finetune fit``, resumed from ``checkpoints/last.ckpt`` when a
  previous fit was interrupted (a finished fit restored this way stops at once), then tests
  the best checkpoint with ``avvp-finetune test --ckpt_path best``.

So rerunning the same command after a crash, a kill or a pre-empted job redoes only what did
not finish. Runs go seed-major (every config with the first seed, then the next seed), so a
sweep stopped half-way already has every table row.

The runs execute in this process, one after another: a process pays the ~6 s import of
torch and Lightning once, not twice per run, and a test can watch the calls. Nothing leaks
from one run to the next: each ``avvp-finetune`` call builds its own trainer, model and data
and reseeds every RNG; the W&B run that Lightning leaves open is finished after each call
(else the next run would log into it), and the CUDA cache is emptied.

Fanning out uses ordinary launchers, not a scheduler of ours: one ``avvp-ablate`` per GPU
(``CUDA_VISIBLE_DEVICES=0 avvp-ablate --configs han,base ... &``, ``CUDA_VISIBLE_DEVICES=1
avvp-ablate --configs base_gcaa ... &``), or on a cluster a job array with one
``avvp-ablate --configs X --seeds 1 --first_seed S`` (or its ``avvp-finetune fit`` + ``test``
lines, which ``--dry_run`` prints) per (config, seed).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import shlex
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from avvp_lightning import runinfo
from avvp_lightning.cli import FREE_ON_RESUME, bundled_configs, command_line_errors, resolve_config_args
from avvp_lightning.data.datamodules import LLPDataModule
from avvp_lightning.errors import DataError
from avvp_lightning.finetune import cli as finetune_cli
from avvp_lightning.finetune.module import ParserModule
from avvp_lightning.labels import CLASSES
from avvp_lightning.metrics import METRIC_KEYS

#: The rows of the paper's Tables 1-2 that need no pretrained features (the default sweep).
DEFAULT_CONFIGS = ("han", "base", "base_gcaa", "base_adv_skip", "base_adv_skip_gcaa")
#: Options that do not change a run's numbers (where it runs, logs and writes): not compared with a finished run.
INERT = ("run.", "ckpt_path", "weights_only", "trainer.logger", "trainer.callbacks", "trainer.enable_progress_bar",
         "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.default_root_dir", "trainer.devices",
         "trainer.num_nodes", "trainer.accelerator", "trainer.strategy", "trainer.profiler", "trainer.plugins",
         "trainer.model_registry", "trainer.num_sanity_val_steps", "trainer.barebones", "trainer.detect_anomaly",
         "trainer.benchmark", "trainer.max_time", "trainer.enable_checkpointing", "trainer.inference_mode")

#: Options the sweep sets itself for every run; passing them through would break the folder layout.
RESERVED = ("--run.name", "--run.group", "--seed_everything", "--ckpt_path", "--trainer.default_root_dir")


def metrics_problem(path: Path) -> Optional[str]:
    """Why ``metrics.json`` is not a finished test's output (None when it is): a sweep tests such a run again."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"not readable JSON ({err})"
    if not isinstance(metrics, dict):
        return "not a JSON object"
    missing = [k for k in METRIC_KEYS if not isinstance(metrics.get(k), (int, float)) or isinstance(metrics.get(k), bool)]
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else {}
    missing += [f"per_class {key}" for key in ("segment/audio", "segment/visual")
                if not isinstance(per_class.get(key), dict) or any(c not in per_class[key] for c in CLASSES)]
    return f"no number for {', '.join(missing)} (expected the output of avvp-finetune test)" if missing else None


@dataclass(frozen=True)
class Run:
    """One (config, seed) of a sweep.

    Args:
        name: The config's name (file name without ``.yaml``): run folder, ``run.name`` and W&B group.
        config: The config as given to ``--config`` (a bundled name or a path).
        seed: ``--seed_everything`` of the run.
        output_dir: ``--run.output_dir`` (root of all runs).
    """

    name: str
    config: str
    seed: int
    output_dir: Path

    @property
    def folder(self) -> Path:
        """``<output_dir>/<name>/seed<seed>``, as the CLI lays it out."""
        return self.output_dir / self.name / f"seed{self.seed}"

    @property
    def done(self) -> bool:
        """Whether the test stage finished: its ``metrics.json`` (written last) holds the ten numbers."""
        return metrics_problem(self.folder / "test" / "metrics.json") is None  # absent, cut short...: test again

    @property
    def last_checkpoint(self) -> Path:
        """Where an interrupted fit left its state."""
        return self.folder / "checkpoints" / "last.ckpt"

    def differences(self, extra: list[str], fingerprints: Optional[dict] = None) -> list[str]:
        """How the run's fit differs from this sweep's (``run.json``): ``["key: old -> new", ...]``.

        Compares every option that can change the run's reported numbers (all but :data:`INERT`
        ones and where the data and outputs are; the test's threshold against the ``test``
        record) on the resolved config of this sweep's ``fit`` (the CLI's ``--print_config``),
        and the data by fingerprint: the same options written another way (a path absolute or
        relative) and a run folder or dataset that moved or was copied count as the same. Empty
        when alike, or when the run has no record. ``fingerprints`` caches data fingerprints
        across the runs of a sweep.
        """
        records = runinfo.read_run_records(self.folder)
        fit, test = records.get("fit"), records.get("test")
        if not isinstance(fit, dict) or not isinstance(fit.get("config"), dict):
            return []
        config = _fit_config(_without_ckpt(self.args("fit", extra)))
        if config is None:  # options this version cannot read: the run's fit ran, this sweep would stop on them
            return ["options (this sweep's fit options do not parse)"]
        recorded = runinfo.fit_options(fit)  # (a resumed fit: as it ended, max_epochs included)
        if isinstance(test, dict) and isinstance(test.get("config"), dict):  # the reported numbers' threshold
            recorded["model.threshold"] = runinfo.flatten_config(test["config"]).get("model.threshold")
        changes = []
        for key, (old, new) in runinfo.config_changes(recorded, runinfo.flatten_config(config)).items():
            if key not in recorded or key.startswith(INERT) or key.startswith(FREE_ON_RESUME):
                continue
            if key == "trainer.precision" and new is None:  # auto: the fit recorded what it picked
                continue
            changes.append(f"{key}: {old!r} -> {new!r}")
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        trained_on = fit.get("data")
        if isinstance(trained_on, dict) and trained_on.get("sha256"):
            root = data.get("root")
            if root is None:  # the embedded default: the same when the fit used it too
                same = (fit["config"].get("data") or {}).get("root") is None
            else:
                folders = {k.removesuffix("_dir"): v for k, v in data.items()
                           if k.endswith("_dir") and isinstance(v, str)}
                cache = fingerprints if fingerprints is not None else {}
                key = json.dumps([str(Path(root).expanduser().resolve()), folders], sort_keys=True)
                if key not in cache:
                    cache[key] = runinfo.data_fingerprint(root, folders)
                same = runinfo.same_data(trained_on, cache[key])
            if not same:
                changes.append(f"data: {trained_on.get('root')} (sha256 {trained_on['sha256'][:12]}...) -> {root}")
            tested_on = test.get("data") if isinstance(test, dict) else None
            if same and isinstance(tested_on, dict) and tested_on.get("sha256") and root is not None \
                    and not runinfo.same_data(tested_on, cache[key]):
                changes.append(f"test data: {tested_on.get('root')} (sha256 {tested_on['sha256'][:12]}...) -> {root}")
        return changes

    def args(self, subcommand: str, extra: list[str]) -> list[str]:
        """``avvp-finetune`` arguments of ``subcommand`` (``fit`` or ``test``) for this run."""
        args = [subcommand, "--config", self.config, *extra, "--seed_everything", str(self.seed),
                "--run.name", self.name, "--run.group", self.name, "--run.output_dir", str(self.output_dir)]
        if subcommand == "test":
            args += ["--ckpt_path", "best"]
        elif self.last_checkpoint.is_file():
            args += ["--ckpt_path", "last"]
        return args


def check_options(run: "Run", extra: list[str]) -> None:
    """Stop before any run when ``avvp-finetune fit`` refuses a row's options (the parser's error on stderr),
    or when they leave no ``best.ckpt`` for the row's test (no validation)."""
    config = _fit_config(_without_ckpt(run.args("fit", extra)), quiet=False)
    if config is None:
        print(f"[avvp-ablate] avvp-finetune fit refuses the options above (row {run.name}); fix them, then run "
              "the command again", file=sys.stderr, flush=True)
        raise SystemExit(2)
    try:  # the values the model refuses (num_heads 3 for a width of 512), which the parse alone lets through
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ParserModule(**(config.get("model") or {}))
    except (TypeError, ValueError) as err:
        raise DataError(f"invalid option value (row {run.name}): {err}") from None
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    for option, value, leaves_none in (
            ("--trainer.limit_val_batches 0", trainer.get("limit_val_batches"), trainer.get("limit_val_batches") == 0),
            ("--trainer.fast_dev_run", trainer.get("fast_dev_run"), bool(trainer.get("fast_dev_run"))),
            ("--trainer.enable_checkpointing false", None, trainer.get("enable_checkpointing") is False)):
        if leaves_none:
            raise DataError(f"{option}: the sweep tests each run's best.ckpt, which validation picks and fit "
                            "saves, and this leaves none; remove it")


def _fit_config(args: list[str], quiet: bool = True) -> Optional[dict]:
    """The config ``avvp-finetune`` resolves for ``args`` (its ``--print_config``); None when it cannot
    (``quiet=False``: the parser's error is left on stderr, a DataError raised)."""
    argv, printed = sys.argv, io.StringIO()
    sys.argv = ["avvp-finetune"]  # LightningCLI warns when given args while sys.argv holds others; its usage names it
    try:
        with contextlib.redirect_stdout(printed):
            finetune_cli.FinetuneCLI(ParserModule, LLPDataModule, args=[*args, "--print_config"])
    except SystemExit as stop:  # where --print_config ends
        if stop.code not in (0, None):
            return None
    except DataError:
        if not quiet:
            raise
        return None
    finally:
        sys.argv = argv
    config = yaml.safe_load(printed.getvalue())
    return config if isinstance(config, dict) else None


def _without_ckpt(args: list[str]) -> list[str]:
    """``args`` without ``--ckpt_path X`` / ``--ckpt_path=X`` (a resume point, not an option of the run)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            out.append(arg)
    return out


def config_name(config: str) -> str:
    """The row name of a config: ``han``, ``han.yaml`` and ``path/to/han.yaml`` all give ``han``."""
    name = Path(config).name
    for suffix in (".yaml", ".yml"):
        name = name.removesuffix(suffix)
    return name


def plan_runs(configs: list[str], seeds: list[int], output_dir: str | Path) -> list[Run]:
    """The runs of a sweep, seed-major; unknown config names raise a DataError before any run."""
    names = [config_name(c) for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"--configs names the row(s) {', '.join(duplicates)} twice")
    for config in configs:
        resolve_config_args(["--config", config], "finetune")  # DataError listing the bundled ones
    return [Run(name, config, seed, Path(output_dir)) for seed in seeds for name, config in zip(names, configs)]


def _release() -> None:
    """Free memory before the next run (each command finishes its own W&B run: AVVPCLI._finish_wandb)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _finetune(args: list[str]) -> None:
    # sys.argv as if avvp-finetune ran these args: Lightning's DDP launcher starts the other processes
    # with this process's command line (sys.argv), and the usage names avvp-finetune.
    argv, environ = sys.argv, dict(os.environ)
    launched = "LOCAL_RANK" in environ  # by torchrun or SLURM: those processes and their process group stay
    script = Path(argv[0]).with_name("avvp-finetune") if argv and argv[0] else None
    script = script if script is not None and script.is_file() else shutil.which("avvp-finetune")
    sys.argv = [str(script or "avvp-finetune"), *args]
    try:
        with warnings.catch_warnings():  # LightningCLI's note that sys.argv holds args too: the same ones
            warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
            finetune_cli.main(args)
    finally:
        sys.argv = argv
        # The next call starts its processes anew: without the DDP process group of this one (its other
        # processes have ended) and the launcher's variables (LOCAL_RANK would say it was launched).
        distributed = sys.modules.get("torch.distributed")
        if not launched and distributed is not None and distributed.is_available() and distributed.is_initialized():
            with contextlib.suppress(Exception):  # never hide the command's own error
                distributed.destroy_process_group()
        for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
            if key in environ:
                os.environ[key] = environ[key]
            else:
                os.environ.pop(key, None)
        _release()


def execute(run: Run, extra: list[str]) -> None:
    """Train (resuming from ``last.ckpt`` when present) and test one run."""
    resumed = run.last_checkpoint.is_file()
    print(f"[avvp-ablate] {run.name} seed {run.seed}: {'resuming fit from last.ckpt' if resumed else 'fit'}",
          flush=True)
    _finetune(run.args("fit", extra))
    print(f"[avvp-ablate] {run.name} seed {run.seed}: test (best checkpoint)", flush=True)
    _finetune(run.args("test", extra))


def sweep(runs: list[Run], extra: list[str], dry_run: bool = False) -> list[Run]:
    """Run the unfinished ``runs`` in order; returns those it ran (or would run, when ``dry_run``).

    An exception (or Ctrl-C) stops the sweep after saying which run failed; the same command
    then resumes where it stopped.
    """
    for run in {run.name: run for run in runs}.values():  # each row once: a misspelt option or a row's bad
        check_options(run, extra)  # config stops here, before any run (also with --dry_run)
    todo = [run for run in runs if not run.done]
    print(f"[avvp-ablate] {len(runs)} runs: {len(runs) - len(todo)} finished, {len(todo)} to do", flush=True)
    fingerprints: dict = {}
    for run in runs:
        changes = run.differences(extra, fingerprints) if run not in todo else []
        if changes:
            shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
            print(f"[avvp-ablate] {run.name} seed {run.seed}: finished with other options or data than this "
                  f"sweep's ({shown}; see {run.folder / 'run.json'}); its results are kept as they are. To redo "
                  "it with this sweep's, delete its folder or use another --output_dir", file=sys.stderr, flush=True)
    for run in todo:
        if dry_run:
            for sub in ("fit", "test"):
                print(shlex.join(["avvp-finetune", *run.args(sub, extra)]), flush=True)
            continue
        try:
            execute(run, extra)
        except DataError:  # bad input or options: the same command would stop here again
            print(f"[avvp-ablate] {run.name} seed {run.seed} stopped on the error below; fix it, then run the "
                  "command again to go on from here", file=sys.stderr, flush=True)
            raise
        except BaseException:
            print(f"[avvp-ablate] {run.name} seed {run.seed} did not finish; run the same command again "
                  "to resume from here", file=sys.stderr, flush=True)
            raise
    return todo


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avvp-ablate",
        description="Train and test every (config, seed) of an ablation, resumably: finished runs "
                    "(a complete test/metrics.json) are skipped, interrupted fits resume from last.ckpt. "
                    "Any other --key value is passed to both avvp-finetune fit and test.",
        epilog=f"Bundled configs: {', '.join(bundled_configs('finetune'))}",
        allow_abbrev=False,  # else `--config x` (passed through) would be read as --configs
    )
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="Comma-separated configs (bundled names or paths), one table row each "
                             "(default: %(default)s).")
    parser.add_argument("--seeds", type=int, default=1, help="Seeds per config (default: %(default)s).")
    parser.add_argument("--first_seed", type=int, default=0,
                        help="First seed: the sweep runs first_seed .. first_seed + seeds - 1 (default: 0).")
    parser.add_argument("--output_dir", default=None,
                        help="Root of the run folders, passed as --run.output_dir (default: outputs; "
                             "--run.output_dir is accepted too).")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the avvp-finetune commands of the unfinished runs and exit.")
    return parser


def parse_args(args: Optional[list[str]] = None) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own options and the arguments passed through to ``avvp-finetune``."""
    parser = _parser()
    opts, extra = parser.parse_known_args(args)
    passed: list[str] = []
    i = 0
    while i < len(extra):
        key = extra[i].split("=", 1)[0]
        if key in RESERVED:
            parser.error(f"{key} is set by the sweep for each run (row name, seed, checkpoint); remove it")
        is_value = i > 0 and extra[i - 1].startswith("-") and "=" not in extra[i - 1]  # --data.root test
        if key in ("fit", "test", "validate", "predict") and not is_value:
            parser.error(f"no subcommand: avvp-ablate runs fit then test itself (got {key!r})")
        if key == "--run.output_dir":  # an alias of --output_dir
            value = extra[i].split("=", 1)[1] if "=" in extra[i] else (extra[i + 1] if i + 1 < len(extra) else None)
            if value is None:
                parser.error("--run.output_dir needs a value")
            opts.output_dir = opts.output_dir or value
            i += 1 if "=" in extra[i] else 2
            continue
        passed.append(extra[i])
        i += 1
    if opts.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {opts.seeds}")
    if opts.first_seed < 0:
        parser.error(f"--first_seed must be >= 0, got {opts.first_seed}")
    if not [c for c in opts.configs.split(",") if c.strip()]:
        parser.error(f"--configs names no config (got {opts.configs!r})")
    opts.output_dir = opts.output_dir or "outputs"
    return opts, passed


def main(args: Optional[list[str]] = None) -> None:
    """Run ``avvp-ablate``; ``args`` as on the command line (default ``sys.argv[1:]``)."""
    opts, extra = parse_args(args)
    configs = [c.strip() for c in opts.configs.split(",") if c.strip()]
    seeds = list(range(opts.first_seed, opts.first_seed + opts.seeds))
    with command_line_errors(args, "avvp-ablate"):
        runs = plan_runs(configs, seeds, opts.output_dir)
        ran = sweep(runs, extra, dry_run=opts.dry_run)
    if not opts.dry_run:
        print(f"[avvp-ablate] done: {len(ran)} run(s) trained and tested. Tables and figures: "
              f"avvp-report --output_dir {shlex.quote(str(opts.output_dir))}", flush=True)


if __name__ == "__main__":
    main()
