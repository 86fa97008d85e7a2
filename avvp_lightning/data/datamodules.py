"""Lightning datamodules: LLP for finetuning (weak labels, dense truth) and snippets for pretraining.

Both hold the (pooled) features in memory as tensors and yield one dict per video; the default
collate stacks them into batches and keeps the ids as a list of strings::

    LLP train:     id, audio (B, T, Da), visual (B, T, Dv), motion (B, T, Dm), label (B, C)
    LLP val/test:  the same plus dense_audio (B, T, C), dense_visual (B, T, C)
    LLP predict:   id, audio, visual, motion (+ label when the list has event_labels)
    snippets:      id, audio (B, T, Da), visual (B, T, Dv)

``visual`` is ``(B, k*T, Dv)`` when ``pool_visual=False``.

Multi-process (DDP) runs: ``batch_size`` is per process. Lightning gives the training loader a
``DistributedSampler``: a seeded shuffle per epoch split across the processes and padded with up to
``W - 1`` repeated videos so that every process runs the same number of steps (DDP syncs gradients
at each step). The validation, test and predict loaders use :class:`EvalDistributedSampler`
instead: no padding, every video scored exactly once, so the epoch metrics equal a single
process's.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from avvp_lightning.data.llp import (
    FEATURE_DIRS, SPLIT_FILES, SplitData, folder_problem, load_features, note_split_listings, raise_problems,
    read_llp, read_video_list, resolve_list,
)
from avvp_lightning.data.sampling import EpochShuffleSampler, loader_generator
from avvp_lightning.data.store import ResidentBatches, read_index, read_store
from avvp_lightning.data.synthetic import default_root
from avvp_lightning.errors import DataError
from avvp_lightning.labels import CLASSES, NUM_CLASSES, NUM_SEGMENTS


class VideoDataset(Dataset):
    """Videos held in memory: item ``i`` is ``{"id": ids[i], name: tensor[i] for each tensor}``."""

    def __init__(self, ids: list[str], tensors: dict[str, torch.Tensor]):
        for name, tensor in tensors.items():
            if len(tensor) != len(ids):
                raise ValueError(f"{name} has {len(tensor)} rows for {len(ids)} ids")
        self.ids = ids
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {"id": self.ids[i]}
        item.update({name: tensor[i] for name, tensor in self.tensors.items()})
        return item


def _check_processes(size: int, processes: int, what: str) -> None:
    """DataError when a non-empty evaluation set has fewer videos than processes.

    A process without a batch would skip the epoch-end metric sync and leave the others waiting
    forever.
    """
    if 0 < size < processes:
        raise DataError(f"{what}: {size} video{'s' if size > 1 else ''} for {processes} processes; every process "
                        "needs at least one (use fewer devices)")


class EvalDistributedSampler(DistributedSampler):
    """Splits an evaluation set across processes without padding: each process gets one block.

    With N videos and W processes, process r gets videos ``r*N//W`` to ``(r+1)*N//W - 1`` in
    list order, so every video is evaluated exactly once, block sizes differ by at most one, and
    the processes' outputs concatenated in rank order are in list order. (Lightning's default,
    PyTorch's ``DistributedSampler``, pads the set with repeated videos instead, which would
    score them twice.) Being a ``DistributedSampler``, Lightning keeps it rather than injecting
    its own.

    Args:
        dataset: The evaluation set (sized).
        num_replicas: Number of processes W.
        rank: This process's rank r.
        what: Name of the set, for the error message.

    Raises:
        DataError: When the set is not empty but smaller than W: a process without a batch
            would skip the epoch-end metric sync and leave the others waiting forever.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, what: str = "evaluation set") -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        size = len(dataset)  # type: ignore[arg-type]
        _check_processes(size, num_replicas, what)
        self.start, self.stop = rank * size // num_replicas, (rank + 1) * size // num_replicas
        self.num_samples, self.total_size = self.stop - self.start, size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))


def _loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool,
            sampler: Optional[Sampler] = None) -> DataLoader:
    """Train loaders shuffle by (run seed, epoch) alone, so a resumed run sees the same orders; others keep order."""
    generator = None
    if shuffle and sampler is None:
        seed = torch.initial_seed()  # the run's seed after seed_everything
        sampler, generator = EpochShuffleSampler(dataset, seed), loader_generator(seed)
    # No shuffle= beside a sampler: Lightning reads shuffling from the sampler's type (under DDP a
    # RandomSampler is swapped for a DistributedSampler that shuffles per epoch).
    order = {"sampler": sampler} if sampler is not None else {"shuffle": False}
    return DataLoader(dataset, batch_size=batch_size, drop_last=False, generator=generator,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0, **order)


def _grid(datamodule: pl.LightningDataModule) -> tuple[int, int]:
    """(rank, number of processes) of this process: (0, 1) outside DDP."""
    trainer = datamodule.trainer
    if trainer is not None:
        grid = trainer.distributed_sampler_kwargs  # None in a single process
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        grid = {"num_replicas": torch.distributed.get_world_size(), "rank": torch.distributed.get_rank()}
    else:
        grid = None
    return (grid["rank"], grid["num_replicas"]) if grid else (0, 1)


LIMITS = {"val": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}


def _check_fraction(what: str, option: str, limit: object, batches: int, per_process: bool = False) -> None:
    """DataError when ``--trainer.<option>``, a fraction, keeps less than one of ``batches``.

    Lightning stops on that with a traceback once the loop starts, after the run had begun (an
    earlier run in the folder moved aside); here it is one line while the data loads.
    """
    if isinstance(limit, float) and 0 < limit < 1 and batches and int(batches * limit) == 0:
        raise DataError(f"{what}: --trainer.{option}={limit} of its {batches} batches"
                        f"{' per process' if per_process else ''} is less than one batch; raise the limit")


def scored_videos(datamodule: pl.LightningDataModule, split: str) -> VideoDataset:
    """The videos of an evaluation split that are scored: the same ones for any number of processes.

    All of them, unless ``--trainer.limit_{val,test,predict}_batches`` limits the split. Lightning
    applies such a limit in each process, which under DDP would score each process's first
    batches of its own block instead of the list's first batches. So under DDP the limit is
    applied here, to the list (the videos one process scores: the first ``k`` batches, or the
    fraction's ``int(f * batches)``), and the trainer's own limit then set to all batches. Worked
    out once per split and trainer.

    Raises:
        DataError: Fewer scored videos than processes, or a fractional limit below one batch (also
            in one process, where Lightning would stop with a traceback after the run had begun).
    """
    trainer, (_, world) = datamodule.trainer, _grid(datamodule)
    known: dict[str, tuple[object, VideoDataset]] = datamodule.__dict__.setdefault("_scored", {})
    if split in known and known[split][0] is trainer:
        return known[split][1]
    dataset, what = datamodule.datasets[split], f"{type(datamodule).__name__} {split} set"
    limit = getattr(trainer, LIMITS[split], 1.0) if trainer is not None and split in LIMITS else 1.0
    batches = math.ceil(len(dataset) / datamodule.batch_size)
    _check_fraction(what, LIMITS[split], limit, batches)
    if world > 1 and limit != 0 and not (isinstance(limit, float) and limit == 1.0):  # int 1: one batch
        kept = int(batches * limit) if isinstance(limit, float) else min(int(limit), batches)
        size = min(len(dataset), kept * datamodule.batch_size)
        dataset = VideoDataset(dataset.ids[:size], {name: t[:size] for name, t in dataset.tensors.items()})
        setattr(trainer, LIMITS[split], 1.0)  # applied above, to the list, for every process alike
    _check_processes(len(dataset), world, what)
    known[split] = (trainer, dataset)
    return dataset


def check_train_limit(datamodule: pl.LightningDataModule) -> None:
    """DataError when ``--trainer.limit_train_batches`` is a fraction of less than one training batch."""
    trainer, (_, world) = datamodule.trainer, _grid(datamodule)
    limit = getattr(trainer, "limit_train_batches", 1.0) if trainer is not None else 1.0
    if not (isinstance(limit, float) and 0 < limit < 1) or "train" not in datamodule.datasets:
        return
    batches = math.ceil(math.ceil(len(datamodule.datasets["train"]) / world) / datamodule.batch_size)  # per process
    _check_fraction(f"{type(datamodule).__name__} train set", "limit_train_batches", limit, batches, world > 1)


def _eval_loader(datamodule: pl.LightningDataModule, split: str) -> DataLoader:
    """The loader of an evaluation split in list order; its own block of it per process under DDP."""
    dataset, (rank, world) = scored_videos(datamodule, split), _grid(datamodule)
    sampler = None
    if world > 1:
        sampler = EvalDistributedSampler(dataset, world, rank, what=f"{type(datamodule).__name__} {split} set")
    return _loader(dataset, datamodule.batch_size, datamodule.num_workers, shuffle=False, sampler=sampler)


class LLPDataModule(pl.LightningDataModule):
    """The LLP benchmark (or a dataset in its layout) for training and evaluating video parsers.

    Training batches carry weak, video-level labels only. Validation and test batches also carry
    the dense segment-level truth; their ``label`` (the weak labels of the val/test CSVs) is there
    for analysis only: a model must never see it at evaluation time, since painting the true weak
    labels on every segment alone beats most published parsers.

    Args:
        root: Dataset root in the official LLP layout. None: the embedded synthetic set, generated
            on first use and cached (``$AVVP_DATA_DIR`` or ``~/.cache/avvp_lightning``).
        batch_size: Videos per batch.
        num_workers: DataLoader worker processes (features are in memory; 0 is usually fastest).
        audio_dir: Audio feature folder, relative to ``root`` (VGGish: ``feats/vggish``).
        visual_dir: 2D visual feature folder (ResNet152 frames: ``feats/res152``).
        motion_dir: 3D visual feature folder (R(2+1)D: ``feats/r2plus1d_18``).
        audio_dim: Audio feature size (VGGish: 128).
        visual_dim: Visual feature size (ResNet152: 2048).
        motion_dim: 3D feature size (R(2+1)D: 512).
        num_segments: Segments per video.
        pool_visual: Mean-pool the visual frames (80 per video) to one row per segment.
        predict_split: What ``predict`` runs on: ``train``, ``val``, ``test``, or the path of a CSV
            with a ``filename`` column (and optionally ``event_labels``) naming videos whose
            features are in ``root``.
        store: A packed store (``avvp-data pack ROOT``, e.g. ``ROOT/packed``) to read train/val/test
            from instead of the per-file layout: the same arrays, read in seconds. It must be up to
            date with ``root`` (else a DataError names what changed); with ``root`` unset, the root it
            was packed from. A predict list (a CSV path) is still read from the per-file layout.
        device_resident: Keep each split as tensors on the training device and slice batches by
            index instead of a DataLoader (seeded shuffle per epoch; DDP shards like the samplers).
    """

    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}

    def __init__(self, root: Optional[str] = None, batch_size: int = 64, num_workers: int = 0,
                 audio_dir: str = FEATURE_DIRS["audio"], visual_dir: str = FEATURE_DIRS["visual"],
                 motion_dir: str = FEATURE_DIRS["motion"], audio_dim: int = 128, visual_dim: int = 2048,
                 motion_dim: int = 512, num_segments: int = NUM_SEGMENTS, pool_visual: bool = True,
                 predict_split: str = "test", store: Optional[str] = None, device_resident: bool = False):
        super().__init__()
        _check_sizes(batch_size, num_workers, num_segments)
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.audio_dim, self.visual_dim, self.motion_dim = audio_dim, visual_dim, motion_dim
        self.num_segments = num_segments
        self.class_names: list[str] = list(CLASSES)
        self.num_classes = NUM_CLASSES
        self.datasets: dict[str, VideoDataset] = {}

    @property
    def root(self) -> Path:
        """The dataset root (the embedded synthetic set when none was given)."""
        given = self.hparams.root
        if given is None and self.hparams.store is not None:
            return Path(read_index(self.store_path())["source"])
        return Path(given).expanduser() if given is not None else default_root("llp")

    def store_path(self) -> Optional[Path]:
        """The store folder (None without ``store``): as given, or relative to ``root`` when not found as given."""
        if self.hparams.store is None:
            return None
        store, given = Path(self.hparams.store).expanduser(), self.hparams.root
        return store if store.is_absolute() or store.exists() or given is None else Path(given).expanduser() / store

    def _existing_store(self) -> Path:
        """:meth:`store_path`, checked to exist (DataError naming where a relative one was looked for)."""
        path, given = self.store_path(), Path(self.hparams.store).expanduser()
        if not path.exists() and not given.is_absolute() and path != given:
            raise DataError(f"--data.store {self.hparams.store}: no such folder, neither {given.absolute()} nor "
                            f"{path} (under --data.root); `avvp-data pack ROOT` writes ROOT/packed")
        return path

    def prepare_data(self) -> None:
        if self.hparams.root is None and self.hparams.store is None:
            default_root("llp")  # generated once (on rank zero) before setup runs everywhere

    def setup(self, stage: Optional[str] = None) -> None:
        """Check and load the splits ``stage`` needs (all three when None); raises DataError."""
        needed = self.STAGE_SPLITS.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test")
        missing = [s for s in needed if s not in self.datasets]
        if not missing:
            return
        root, hp = self.root, self.hparams
        lists, splits = {}, [s for s in missing if s != "predict"]
        if "predict" in missing:
            if hp.predict_split in SPLIT_FILES:
                splits.append(hp.predict_split)
            else:
                lists["predict"] = resolve_list(root, hp.predict_split)
        problems: list[str] = []
        options = dict(audio_dir=hp.audio_dir, visual_dir=hp.visual_dir, motion_dir=hp.motion_dir,
                       audio_dim=hp.audio_dim, visual_dim=hp.visual_dim, motion_dim=hp.motion_dim,
                       num_segments=hp.num_segments, pool_visual=hp.pool_visual)
        splits = list(dict.fromkeys(splits))
        # (a predict list alone is read from the per-file layout: the store is not needed, nor checked)
        data = read_store(self._existing_store(), splits, root=root, **options) if hp.store is not None and splits else {}
        if lists or hp.store is None:
            dense = [s for s in missing if s != "predict"]  # predict needs no truth, also on the test split
            data.update(read_llp(root, [s for s in splits if s not in data] + list(lists), lists=lists,
                                 problems=problems, dense_splits=dense, **options))
        raise_problems(problems, what=f"LLP dataset at {root}", check="avvp-data check ROOT" + (
            f" --list {lists['predict']}" + (f" --splits {' '.join(splits)}" if splits else "") if lists else ""))
        for split in missing:
            if split == "predict":
                source = data["predict" if lists else hp.predict_split]
                self.datasets["predict"] = self._dataset(source, dense=False)
            else:
                self.datasets[split] = self._dataset(data[split], dense=split != "train")
        for split in set(missing) & set(LIMITS):  # enough videos for the processes: checked before any output
            scored_videos(self, split)
        check_train_limit(self)
        if stage == "fit" and "test" not in self.datasets:
            self._look_at_test_split(options)

    def _look_at_test_split(self, options: dict[str, Any]) -> None:
        """Warn before training when the test split has problems that ``test`` would stop on.

        A quick look (its CSVs and dense truth, that its feature files are there; of a store, that it
        holds the test split): a fit of hours should not end in a test that refuses the data. A
        warning, not an error, since training needs only train and val. The CSVs' own warnings were
        given while the training splits loaded (they are read again here, quietly).
        """
        root, problems = self.root, []
        if self.hparams.store is not None:
            store = self._existing_store()
            if "test" not in read_index(store)["splits"]:
                problems = [f"{store} holds no test split (it was packed with --splits of train and val only); "
                            "test reads the test split from the store it is given"]
        elif (root / SPLIT_FILES["test"]).is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                read_llp(root, ["test"], keep=False, read_features=False, problems=problems, **options)
        else:
            problems = [f"{root / SPLIT_FILES['test']}: file not found"]
        if problems:
            shown = problems[:5] + ([f"... and {len(problems) - 5} more (avvp-data check ROOT lists them all)"]
                                    if len(problems) > 5 else [])
            rank_zero_warn("the test split has problems that avvp-finetune test will stop on (training goes on, "
                           "on train and val): " + "; ".join(shown))

    @staticmethod
    def _dataset(split: SplitData, dense: bool) -> VideoDataset:
        tensors = {
            "audio": torch.from_numpy(split.audio),    # (N, T, Da)
            "visual": torch.from_numpy(split.visual),  # (N, T, Dv) or (N, k*T, Dv)
            "motion": torch.from_numpy(split.motion),  # (N, T, Dm)
        }
        if split.labels is not None:
            tensors["label"] = torch.from_numpy(split.labels)  # (N, C)
        if dense:
            tensors["dense_audio"] = torch.from_numpy(split.dense_audio)    # (N, T, C)
            tensors["dense_visual"] = torch.from_numpy(split.dense_visual)  # (N, T, C)
        return VideoDataset(split.filenames, tensors)

    def _resident(self, split: str, train: bool) -> ResidentBatches:
        """``split`` as device-resident batches on the trainer's device, sharded per process."""
        trainer, (rank, world) = self.trainer, _grid(self)
        dataset = self.datasets[split] if train else scored_videos(self, split)
        return ResidentBatches(dataset.ids, dataset.tensors, self.batch_size, shuffle=train, pad=train,
                               seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
                               device=trainer.strategy.root_device if trainer is not None else "cpu",
                               rank=rank, world_size=world)

    def train_dataloader(self) -> DataLoader:
        if self.hparams.device_resident:
            return self._resident("train", train=True)
        return _loader(self.datasets["train"], self.batch_size, self.num_workers, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.hparams.device_resident:
            return self._resident("val", train=False)
        return _eval_loader(self, "val")

    def test_dataloader(self) -> DataLoader:
        if self.hparams.device_resident:
            return self._resident("test", train=False)
        return _eval_loader(self, "test")

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.device_resident:
            return self._resident("predict", train=False)
        return _eval_loader(self, "predict")


def _check_sizes(batch_size: int, num_workers: int, num_segments: int) -> None:
    """ValueError naming the option when a datamodule's batch size, workers or segments are out of range."""
    for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                               ("num_segments", num_segments, 1)):
        if value < least:
            raise ValueError(f"data.{name} must be >= {least}, got {value}")


class SnippetDataModule(pl.LightningDataModule):
    """Unlabeled videos of 10 one-second snippets for grounding pretraining.

    Args:
        root: Folder with the video list and feature folders. None: the embedded synthetic
            snippet set, generated on first use and cached like the LLP default.
        list_csv: Tab-separated list with a ``filename`` column, relative to ``root``. When it is
            absent and ``root`` is an LLP root, ``AVVP_train.csv`` trains and ``AVVP_val_pd.csv``
            validates.
        val_fraction: Share of the list held out for validation (a fixed random choice).
        batch_size: Videos per batch.
        num_workers: DataLoader worker processes.
        audio_dir: Audio feature folder, relative to ``root``.
        visual_dir: Visual feature folder, relative to ``root`` (frames are mean-pooled to segments).
        audio_dim: Audio feature size.
        visual_dim: Visual feature size.
        num_segments: Snippets per video.
        split_seed: Seed of the train/validation choice (independent of the training seed).
    """

    def __init__(self, root: Optional[str] = None, list_csv: str = "snippets.csv", val_fraction: float = 0.1,
                 batch_size: int = 64, num_workers: int = 0, audio_dir: str = FEATURE_DIRS["audio"],
                 visual_dir: str = FEATURE_DIRS["visual"], audio_dim: int = 128, visual_dim: int = 2048,
                 num_segments: int = NUM_SEGMENTS, split_seed: int = 0):
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        _check_sizes(batch_size, num_workers, num_segments)
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.audio_dim, self.visual_dim, self.num_segments = audio_dim, visual_dim, num_segments
        self.datasets: dict[str, VideoDataset] = {}

    @property
    def root(self) -> Path:
        """The dataset root (the embedded synthetic snippet set when none was given)."""
        given = self.hparams.root
        return Path(given).expanduser() if given is not None else default_root("snippets")

    def prepare_data(self) -> None:
        if self.hparams.root is None:
            default_root("snippets")

    def _lists(self, root: Path, problems: list[str]) -> dict[str, tuple[list[str], list[str]]]:
        """``{"train"|"val": (filenames, "file, line n" per video)}``."""
        listed = resolve_list(root, self.hparams.list_csv)
        csvs = {"all": listed}
        if not listed.is_file() and (root / SPLIT_FILES["train"]).is_file():
            csvs = {"train": root / SPLIT_FILES["train"]}
            if (root / SPLIT_FILES["val"]).is_file():
                csvs["val"] = root / SPLIT_FILES["val"]
        lists = {}
        seen: dict[str, tuple[str, str]] = {}
        for name, csv in csvs.items():
            filenames, _, lines = read_video_list(csv, labels="ignore", problems=problems)
            lists[name] = (filenames, [f"{csv}, line {line}" for line in lines])
            note_split_listings(seen, name, *lists[name], problems)  # an LLP root's train and val
        if "val" in lists:
            return lists
        names, where = lists.pop("all", None) or lists.pop("train")
        n_val = int(round(len(names) * self.hparams.val_fraction))
        n_val = min(max(n_val, 1 if self.hparams.val_fraction > 0 else 0), max(len(names) - 1, 0))
        if n_val == 0 and self.hparams.val_fraction > 0 and names:
            rank_zero_warn(f"snippet dataset at {root}: {len(names)} listed video(s), none held out for validation "
                           "(one is always left to train): no validation metrics and no best.ckpt")
        order = np.random.default_rng(self.hparams.split_seed).permutation(len(names))
        pick = {"val": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}
        return {s: ([names[i] for i in idx], [where[i] for i in idx]) for s, idx in pick.items()}

    def setup(self, stage: Optional[str] = None) -> None:
        """Check and load the train and validation snippets (once); raises DataError."""
        if self.datasets:
            return
        root, hp, problems = self.root, self.hparams, []
        problem = folder_problem(root)
        paths = (resolve_list(root, hp.list_csv), root / hp.audio_dir, root / hp.visual_dir)
        if problem and any(root in path.parents for path in paths):  # (absolute lists and folders need no root)
            raise DataError(f"{root}: {problem} (the snippet dataset root, holding its list CSV and feature folders)")
        lists = self._lists(root, problems)
        for split, (names, where) in lists.items():
            tensors = {}
            for key, folder, dim in (("audio", hp.audio_dir, hp.audio_dim), ("visual", hp.visual_dir, hp.visual_dim)):
                array = load_features(root / folder, names, hp.num_segments, dim, pool=True, problems=problems,
                                      listed_in=where, per_segment=key == "audio")  # (N, T, D)
                tensors[key] = torch.from_numpy(array)
            self.datasets[split] = VideoDataset(names, tensors)
        raise_problems(problems, what=f"snippet dataset at {root}")
        if stage == "validate" and not len(self.datasets["val"]):
            listed = sum(len(self.datasets[split]) for split in self.datasets)
            raise DataError(f"snippet dataset at {root}: validate needs held-out videos, and none are held out "
                            f"(--data.val_fraction {hp.val_fraction} of {listed} listed videos; one is always "
                            f"left to train); give a larger fraction or list, or an {SPLIT_FILES['val']} beside "
                            f"{SPLIT_FILES['train']}")
        if "val" in self.datasets:
            scored_videos(self, "val")  # enough videos for the processes: checked before any output
        check_train_limit(self)

    def train_dataloader(self) -> DataLoader:
        return _loader(self.datasets["train"], self.batch_size, self.num_workers, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return _eval_loader(self, "val")
