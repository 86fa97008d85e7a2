"""The fast data paths: packed store, device-resident batches, pooled-first parsing, mixed precision.

Every fast path is checked against the default one it replaces: the store against the per-file
reader, resident batches against a plain index loop, the parser on pooled input against HAN's
frame projection (fc on each of the 80 frames, then the mean of each 8), bfloat16 metrics against
the float32 metrics of the same decisions.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from avvp_lightning.data.cli import main as data_main
from avvp_lightning.data.datamodules import LLPDataModule
from avvp_lightning.data.llp import read_llp
from avvp_lightning.data.store import INDEX_FILE, ResidentBatches, pack_store, read_store
from avvp_lightning.data.synthetic import SMALL_DIMS, generate_llp
from avvp_lightning.errors import DataError
from avvp_lightning.finetune.cli import main as finetune
from avvp_lightning.finetune.module import ParserModule
from avvp_lightning.finetune.report import run_data_root
from avvp_lightning.metrics import METRIC_KEYS, avvp_scores, decide
from avvp_lightning.models.parser import AVVPParser
from avvp_lightning.runinfo import data_fingerprint, same_data
from test_ddp import run_ddp  # tests/test_ddp.py: the console script under 2 DDP processes

DIMS = dict(SMALL_DIMS)  # audio 32, visual 32, motion 16
FIELDS = ("audio", "visual", "motion", "labels", "dense_audio", "dense_visual")


@pytest.fixture(scope="module")
def packed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store") / "llp"
    generate_llp(root, num_train=40, num_val=11, num_test=13, seed=5, **DIMS)
    pack_store(root, **DIMS)
    return root


@pytest.fixture()
def root(packed_root: Path, tmp_path: Path) -> Path:
    """A private copy (mtimes kept, so its store stays up to date) that a test may change."""
    copy = tmp_path / "llp"
    shutil.copytree(packed_root, copy)
    return copy


def _dm(root: Path, **kwargs: object) -> LLPDataModule:
    return LLPDataModule(str(root), batch_size=8, **DIMS, **kwargs)


# ------------------------------------------------------------------------------------ store
def test_store_holds_exactly_what_the_per_file_reader_reads(packed_root: Path) -> None:
    files = read_llp(packed_root, **DIMS)
    store = read_store(packed_root / "packed", ["train", "val", "test"], **DIMS)
    for split, expected in files.items():
        got = store[split]
        assert got.filenames == expected.filenames
        for field in FIELDS:
            a, b = getattr(expected, field), getattr(got, field)
            assert (a is None) == (b is None), (split, field)
            if a is not None:
                assert b.dtype == a.dtype == np.float32 and np.array_equal(a, b), (split, field)
    assert store["train"].visual.shape == (40, 10, DIMS["visual_dim"])  # pooled once, at build time
    index = json.loads((packed_root / "packed" / INDEX_FILE).read_text())
    assert index["splits"]["test"]["videos"] == 13 and index["options"]["dims"]["visual"] == DIMS["visual_dim"]


def test_store_fed_batches_equal_per_file_batches(packed_root: Path) -> None:
    per_file, stored = _dm(packed_root), _dm(packed_root, store="packed")  # relative to root
    for dm in (per_file, stored):
        dm.setup("fit")
        dm.setup("test")
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        torch.manual_seed(0)
        expected = list(getattr(per_file, loader)())
        torch.manual_seed(0)
        got = list(getattr(stored, loader)())
        assert len(got) == len(expected) > 1
        for a, b in zip(expected, got):
            assert a.keys() == b.keys() and a["id"] == b["id"]
            for key in a.keys() - {"id"}:
                assert torch.equal(a[key], b[key]), (loader, key)


def test_stale_store_names_what_changed(root: Path) -> None:
    _dm(root, store="packed").setup("fit")  # up to date: the copy kept the mtimes
    with open(root / "AVVP_train.csv", "a") as f:
        f.write("\n")
    with pytest.raises(DataError, match=r"out of date(.|\n)*AVVP_train\.csv: \d+ -> \d+ bytes(.|\n)*avvp-data pack") as info:
        _dm(root, store="packed").setup("fit")
    command = str(info.value).rsplit("rebuild it: ", 1)[1]  # with the store's sizes: it works as printed
    assert command.endswith("--audio-dim 32 --visual-dim 32 --motion-dim 16")
    assert data_main(shlex.split(command)[1:]) == 0
    _dm(root, store="packed").setup("fit")


def test_rebuild_command_quotes_paths_and_packs_the_splits_asked_for(root: Path, tmp_path: Path) -> None:
    spaced = Path(shutil.copytree(root, tmp_path / "my data" / "llp"))
    store = spaced / "two splits"
    pack_store(spaced, store, splits=["train", "test"], **DIMS)
    with open(spaced / "AVVP_train.csv", "a") as f:
        f.write("\n")
    with pytest.raises(DataError, match="out of date") as info:
        read_store(store, ["val"], **DIMS)
    command = shlex.split(str(info.value).rsplit("rebuild it: ", 1)[1])
    assert command[:3] == ["avvp-data", "pack", str(spaced)] and "--splits" not in command  # all three now
    assert data_main(command[1:]) == 0
    read_store(store, ["val"], **DIMS)  # the split asked for is there: no second rebuild


def test_an_unreadable_csv_stops_pack_and_the_freshness_check(root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from avvp_lightning.data import store as store_module
    real, test_csv = store_module.file_sha256, root / "AVVP_test_pd.csv"

    def denied(path: object) -> str:
        if Path(str(path)) == test_csv:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(store_module, "file_sha256", denied)
    unreadable = re.escape(f"{test_csv}: cannot be read (permission denied)")
    with pytest.raises(DataError, match=unreadable):  # even when no packed split needs it: it identifies the source
        pack_store(root, tmp_path / "s", splits=["train", "val"], **DIMS)
    assert not (tmp_path / "s").exists()
    with pytest.raises(DataError, match=f"cannot check that the store is up to date with {root}: {unreadable}"):
        read_store(root / "packed", ["val"], root=root, **DIMS)  # not "its content changed"


def test_stale_store_sees_touched_and_added_feature_files(root: Path) -> None:
    path = next((root / "feats" / "res152").glob("*.npy"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=r"feats/res152/: \.npy files were modified"):
        read_store(root / "packed", ["val"], root=root, **DIMS)
    shutil.copy(path, root / "feats" / "vggish" / "zzzzzzzzzzz.npy")
    with pytest.raises(DataError, match=r"feats/vggish/: \d+ -> \d+ \.npy files"):
        read_store(root / "packed", ["val"], root=root, **DIMS)


def test_store_ignores_other_files_and_sees_renamed_features(root: Path) -> None:
    (root / "feats" / "vggish" / "README.txt").write_text("extracted with VGGish\n")  # not a feature file
    (root / "feats" / "res152" / ".DS_Store").write_bytes(b"\0")
    assert read_store(root / "packed", ["val"], root=root, **DIMS)["val"].audio.shape[0] == 11
    first, second = sorted((root / "feats" / "r2plus1d_18").glob("*.npy"))[:2]
    os.utime(first, ns=(0, 10**18))  # distinct mtimes (an archive's whole seconds could tie: then unseen)
    os.utime(second, ns=(0, 10**18 + 10**9))
    pack_store(root, root / "packed", overwrite=True, **DIMS)
    spare = first.with_name("spare.npy")
    first.rename(spare)  # two videos' files swapped: the same names, sizes and mtimes
    second.rename(first)
    spare.rename(second)
    with pytest.raises(DataError, match=r"feats/r2plus1d_18/: \.npy files were swapped"):
        read_store(root / "packed", ["val"], root=root, **DIMS)
    second.rename(second.with_name("zzzzzzzzzzz.npy"))
    with pytest.raises(DataError, match=r"feats/r2plus1d_18/: \.npy files were renamed"):
        read_store(root / "packed", ["val"], root=root, **DIMS)


def test_store_with_its_csvs_but_without_features_is_used_with_a_warning(root: Path) -> None:
    shutil.rmtree(root / "feats")  # e.g. the dataset's CSVs and its store copied to a GPU node
    with pytest.warns(UserWarning, match="feature folders of its source are not under"):
        assert len(read_store(root / "packed", ["test"], root=root, **DIMS)["test"].filenames) == 13
    with open(root / "AVVP_test_pd.csv", "a") as f:  # the CSVs are still compared
        f.write("\n")
    with pytest.raises(DataError, match=r"out of date(.|\n)*AVVP_test_pd\.csv"):
        read_store(root / "packed", ["test"], root=root, **DIMS)


def test_data_fingerprint_skips_what_is_not_a_csv_file(root: Path, tmp_path: Path) -> None:
    dirs = {"audio": "feats/vggish", "visual": "feats/res152", "motion": "feats/r2plus1d_18"}
    before = data_fingerprint(root, dirs)
    (root / "old.csv").mkdir()  # a folder, and a dangling link, named *.csv: not data, never a traceback
    (root / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
    assert data_fingerprint(root, dirs) == before


def test_data_fingerprint_tells_exports_of_other_checkpoints_apart(root: Path, tmp_path: Path) -> None:
    # Features exported from another pretraining checkpoint have the same names and shapes.
    data = tmp_path / "data"
    shutil.copytree(root, data)
    dirs = {"audio": "feats/vggish", "visual": "feats/res152", "motion": "feats/r2plus1d_18"}
    plain = data_fingerprint(data, dirs)
    assert "export_sha256" not in plain["features"]["audio"]  # folders that no export wrote: as before
    (data / "feats" / "vggish" / "export.json").write_text('{"encoder": "the checkpoint a.ckpt", "root": "/a"}\n')
    first = data_fingerprint(data, dirs)
    (data / "feats" / "vggish" / "export.json").write_text('{"encoder": "the checkpoint b.ckpt", "root": "/a"}\n')
    second = data_fingerprint(data, dirs)
    assert len({plain["sha256"], first["sha256"], second["sha256"]}) == 3 and not same_data(first, second)
    (data / "feats" / "vggish" / "export.json").write_text('{"encoder": "the checkpoint b.ckpt", "root": "b"}\n')
    assert data_fingerprint(data, dirs)["sha256"] == second["sha256"]  # where the root was is not the data
    # A record made before fingerprints held export.json (a run fit then) still matches the same features.
    assert same_data(plain, second) and same_data(second, plain)
    pack_store(data, overwrite=True, **DIMS)  # and exported folders read from their store alone (the CSVs and the store copied)
    node = tmp_path / "node"
    node.mkdir()
    for csv in data.glob("*.csv"):
        shutil.copy(csv, node)
    shutil.copytree(data / "packed", node / "packed")
    at_source, alone = data_fingerprint(data, dirs, data / "packed"), data_fingerprint(node, dirs, node / "packed")
    assert same_data(at_source, alone) and same_data(alone, at_source)


def test_store_compares_csvs_by_content(root: Path) -> None:
    for csv in root.glob("*.csv"):  # copied without their mtimes (plain cp, scp, a checkout)
        os.utime(csv, ns=(0, csv.stat().st_mtime_ns + 3 * 10**9))
    assert len(read_store(root / "packed", ["test"], root=root, **DIMS)["test"].filenames) == 13
    path = root / "AVVP_test_pd.csv"
    text = path.read_text()
    path.write_text(text[:-2] + ("0" if text[-2] != "0" else "1") + text[-1])  # same size, other content
    with pytest.raises(DataError, match=r"out of date(.|\n)*AVVP_test_pd\.csv: its content changed"):
        read_store(root / "packed", ["test"], root=root, **DIMS)


def test_store_of_an_earlier_version_compares_csvs_by_mtime(root: Path) -> None:
    index_path = root / "packed" / INDEX_FILE
    index = json.loads(index_path.read_text())
    for entry in index["fingerprint"]["csv"].values():  # packed before CSVs were hashed: size and mtime only
        if entry is not None:
            del entry["sha256"]
    index_path.write_text(json.dumps(index))
    assert len(read_store(root / "packed", ["test"], root=root, **DIMS)["test"].filenames) == 13  # unchanged
    csv = root / "AVVP_train.csv"
    os.utime(csv, ns=(0, csv.stat().st_mtime_ns + 3 * 10**9))
    with pytest.raises(DataError, match=r"AVVP_train\.csv: modified \("):
        read_store(root / "packed", ["test"], root=root, **DIMS)


def test_broken_links_and_spelled_out_folders(root: Path, tmp_path: Path) -> None:
    (root / "feats" / "vggish" / "zzzzzzzzzzz.npy").symlink_to(tmp_path / "not_fetched.npy")  # e.g. git-annex
    dirs = {"audio_dir": "feats/vggish/", "visual_dir": "./feats/res152"}
    store = pack_store(root, tmp_path / "store", **dirs, **DIMS)
    assert read_store(store, ["val"], root=root, **DIMS)["val"].audio.shape[0] == 11  # same folders, other spelling


def test_damaged_or_empty_store_file_is_named(root: Path) -> None:
    (root / "packed" / "val" / "motion.npy").write_bytes(b"")  # an interrupted copy
    with pytest.raises(DataError, match=r"val/motion\.npy: missing or damaged store file"):
        read_store(root / "packed", ["val"], root=root, **DIMS)


def test_pack_refuses_mount_points_and_unwritable_folders(root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    mount = tmp_path / "volume"
    mount.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == mount or real_ismount(path))
    with pytest.raises(DataError, match=r"volume: a mount point(.|\n)*give a folder inside it"):
        pack_store(root, mount, **DIMS)
    assert os.listdir(mount) == [] and sorted(os.listdir(tmp_path)) == ["llp", "volume"]

    for error in (PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "Read-only file system")):
        def refuse(self: Path, *args: object, exist_ok: bool = False, **kwargs: object) -> None:
            if not (exist_ok and self.is_dir()):
                raise type(error)(error.errno, error.strerror, str(self))

        monkeypatch.setattr(Path, "mkdir", refuse)  # a read-only dataset (root here: chmod would not stop it)
        with pytest.raises(DataError, match=rf"packed2: cannot create folders in .*llp \({error.strerror}\)"):
            pack_store(root, root / "packed2", **DIMS)


def test_pack_command_names_the_splits_an_overwrite_would_drop(root: Path, capsys: pytest.CaptureFixture) -> None:
    dims = ["--audio-dim", "32", "--visual-dim", "32", "--motion-dim", "16"]
    assert data_main(["pack", str(root), "--out", str(root / "part"), "--splits", "train", "val", *dims]) == 0
    assert data_main(["pack", str(root), "--out", str(root / "part"), "--splits", "test", *dims]) == 2
    assert re.search(r"it holds train, val, not test(.|\n)*to keep train, val give --splits train val test",
                     capsys.readouterr().err)


def test_store_options_must_match(root: Path) -> None:
    with pytest.raises(DataError, match="pool_visual=False needs the per-file layout"):
        _dm(root, store="packed", pool_visual=False).setup("fit")
    with pytest.raises(DataError, match="dims.audio: store 32, asked 16"):
        read_store(root / "packed", ["train"], **{**DIMS, "audio_dim": 16})
    with pytest.raises(DataError, match="not a packed LLP store"):
        _dm(root, store=str(root / "nowhere")).setup("fit")
    with pytest.raises(DataError, match=re.escape(f"--data.store nowhere: no such folder, neither "
                                                  f"{Path('nowhere').absolute()} nor {root / 'nowhere'}")):
        _dm(root, store="nowhere").setup("fit")  # relative: tried as given, then under the root


def test_store_without_its_source_is_used_with_a_warning(root: Path, tmp_path: Path) -> None:
    alone = pack_store(root, tmp_path / "alone", **DIMS)  # e.g. copied alone to a GPU node
    shutil.rmtree(root)
    dm = LLPDataModule(root=None, store=str(alone), batch_size=8, **DIMS)
    with pytest.warns(UserWarning, match="without checking"):
        dm.setup("test")
    assert len(dm.datasets["test"]) == 13


def test_pack_through_a_symlink_writes_where_it_points(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "fast_disk" / "store"
    target.mkdir(parents=True)
    link = tmp_path / "store_link"
    link.symlink_to(target)  # e.g. a store kept on another disk
    for overwrite in (False, True):  # into the empty folder, then replacing the store there
        pack_store(root, link, overwrite=overwrite, **DIMS)
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert (target / INDEX_FILE).is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fast_disk", "llp", "store_link"]  # no leftovers
        assert os.listdir(tmp_path / "fast_disk") == ["store"]
    assert read_store(link, ["test"], root=root, **DIMS)["test"].audio.shape[0] == 13
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="loop: a symbolic link that cannot be followed"):
        pack_store(root, loop, **DIMS)


def test_same_data_across_a_store_copied_alone(packed_root: Path, tmp_path: Path) -> None:
    dirs = {"audio": "feats/vggish", "visual": "feats/res152", "motion": "feats/r2plus1d_18"}
    node = tmp_path / "gpu_node"  # the CSVs and the store only, as the README's GPU recipe copies them
    node.mkdir()
    for csv in packed_root.glob("*.csv"):
        shutil.copy(csv, node)
    shutil.copytree(packed_root / "packed", node / "packed")
    at_source = data_fingerprint(packed_root, dirs, packed_root / "packed")
    per_file, alone = data_fingerprint(packed_root, dirs), data_fingerprint(node, dirs, node / "packed")
    assert alone["sha256"] != at_source["sha256"]  # the store's hash stands in for the missing folders
    assert same_data(at_source, alone) and same_data(alone, at_source) and same_data(per_file, alone)
    other = tmp_path / "other"
    shutil.copytree(node, other)
    pack_store(packed_root, other / "packed", splits=["test"], overwrite=True, **DIMS)  # other packed data
    assert not same_data(alone, data_fingerprint(other, dirs, other / "packed"))
    (node / "AVVP_train.csv").write_text((node / "AVVP_train.csv").read_text() + "\n")  # another CSV
    assert not same_data(at_source, data_fingerprint(node, dirs, node / "packed"))


def test_run_record_and_report_find_the_data_of_a_store_used_alone(packed_root: Path, tmp_path: Path) -> None:
    other = pack_store(packed_root, tmp_path / "other", splits=["test"], **DIMS)
    gone, dirs = tmp_path / "gone", {"audio": "feats/vggish", "visual": "feats/res152", "motion": "feats/r2plus1d_18"}
    first, second = (data_fingerprint(gone, dirs, store) for store in (packed_root / "packed", other))
    assert first["csv"] == second["csv"] == {} and first["store"]["path"] == str((packed_root / "packed").resolve())
    assert first["sha256"] != second["sha256"]  # no source to read: the stores tell the runs apart
    again = pack_store(packed_root, tmp_path / "again", **DIMS)  # the same data packed again: the same hash
    assert data_fingerprint(gone, dirs, again)["sha256"] == first["sha256"]
    per_file = data_fingerprint(packed_root, dirs)  # with the source there, a store run hashes as a per-file run
    assert data_fingerprint(packed_root, dirs, other)["sha256"] == per_file["sha256"] != first["sha256"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config-test.yaml").write_text(yaml.safe_dump({"data": {"root": None, "store": str(other)}}))
    assert run_data_root(SimpleNamespace(folder=run, metrics={})) == (packed_root, 10)  # its source, for timelines


def test_failed_pack_writes_nothing(root: Path, tmp_path: Path) -> None:
    np.save(next((root / "feats" / "r2plus1d_18").glob("*.npy")), np.zeros((3, 16), np.float32))
    with pytest.raises(DataError, match=r"wrong shape \(3, 16\)"):
        pack_store(root, tmp_path / "out", **DIMS)
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["llp"]


def _deny(monkeypatch: pytest.MonkeyPatch, folder: Path, search: bool) -> None:
    """Act as if ``folder`` had no read permission (``search``: and no search permission either).

    Simulated: the tests may run as root, whom permissions do not stop.
    """
    stat, scandir, inside = os.stat, os.scandir, str(folder) + os.sep

    def denied(path: object) -> PermissionError:
        return PermissionError(errno.EACCES, "Permission denied", str(path))

    def guarded_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if search and str(path).startswith(inside):
            raise denied(path)
        return stat(path, *args, **kwargs)

    def guarded_scandir(path: object = ".") -> object:
        if os.path.normpath(str(path)) == str(folder):
            raise denied(path)
        return scandir(path)

    monkeypatch.setattr(os, "stat", guarded_stat)
    monkeypatch.setattr(os, "scandir", guarded_scandir)


def test_unreadable_feature_folder_is_a_named_problem(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    dims = ["--audio-dim", "32", "--visual-dim", "32", "--motion-dim", "16"]
    motion = root / "feats" / "r2plus1d_18"
    with monkeypatch.context() as patch:  # read, no search (chmod 644): no file in it can be opened
        _deny(patch, motion, search=True)
        assert data_main(["check", str(root), *dims]) == 1
        assert f"{motion}: feature folder cannot be opened (permission denied)" in capsys.readouterr().out
        assert data_main(["pack", str(root), "--out", str(tmp_path / "s"), *dims]) == 2
        assert f"{motion}: cannot be listed (permission denied)" in capsys.readouterr().err
        assert not (tmp_path / "s").exists()
    with monkeypatch.context() as patch:  # search, no read (chmod 311): readable files, no listing
        _deny(patch, motion, search=False)
        assert data_main(["check", str(root), *dims]) == 0
        assert data_main(["pack", str(root), "--out", str(tmp_path / "s"), *dims]) == 2
        assert f"{motion}: cannot be listed (permission denied)" in capsys.readouterr().err
        with pytest.raises(DataError, match=f"cannot check that the store is up to date with {root}: {motion}: "
                                            r"cannot be listed \(permission denied\)"):
            _dm(root, store="packed").setup("fit")  # not "out of date"
    assert data_main(["pack", str(root), *dims]) == 0  # nothing was lost: the store is up to date


def test_pack_command(root: Path, capsys: pytest.CaptureFixture) -> None:
    dims = ["--audio-dim", "32", "--visual-dim", "32", "--motion-dim", "16"]
    assert data_main(["pack", str(root), *dims]) == 0
    assert "up to date" in capsys.readouterr().out
    with open(root / "AVVP_eval_audio.csv", "a") as f:
        f.write("\n")
    assert data_main(["pack", str(root), *dims]) == 2
    assert "AVVP_eval_audio.csv" in capsys.readouterr().err
    assert data_main(["pack", str(root), *dims, "--overwrite"]) == 0
    assert "packed train 40, val 11, test 13 videos" in capsys.readouterr().out
    read_store(root / "packed", ["val"], root=root, **DIMS)  # up to date again


def test_pack_overwrite_replaces_only_a_store(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dims = ["--audio-dim", "32", "--visual-dim", "32", "--motion-dim", "16"]
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    foreign = tmp_path / "foreign"  # another tool's folder that happens to hold an index.json
    foreign.mkdir()
    (foreign / INDEX_FILE).write_text('{"format": "something else", "version": 1}')
    for out, match in ((root, "holds the dataset"), (tmp_path, "holds the dataset"),
                       (notes, "not a packed store"), (root / "feats", "not a packed store"),
                       (foreign, "not a packed store"), (notes / "keep.txt", "a file, not a store folder")):
        for overwrite in (["--overwrite"], []):
            assert data_main(["pack", str(root), "--out", str(out), *overwrite, *dims]) == 2, out
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and match in err, err
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before  # nothing touched
    assert (notes / "keep.txt").read_text() == "mine" and (foreign / INDEX_FILE).is_file()
    assert data_main(["pack", str(tmp_path / "nowhere"), *dims]) == 2
    assert f"{tmp_path / 'nowhere'}: not found (the dataset root" in capsys.readouterr().err \
        and not (tmp_path / "nowhere").exists()
    (root / "packed" / "NOTES.txt").write_text("mine")  # the user's file in a store: an overwrite would delete it
    (root / "packed" / "val" / "extra.npy").write_bytes(b"")
    assert data_main(["pack", str(root), "--overwrite", *dims]) == 2
    assert (f"{root / 'packed'}: holds files that are not the store's (NOTES.txt, val/extra.npy); move them out"
            in capsys.readouterr().err)
    assert (root / "packed" / "NOTES.txt").read_text() == "mine"


def test_store_values_and_index_are_checked(root: Path) -> None:
    store = root / "packed"
    path = store / "test" / "audio.npy"
    audio = np.load(path)
    audio[7, 9, 3] = np.nan
    np.save(path, audio)
    filenames = json.loads((store / INDEX_FILE).read_text())["splits"]["test"]["filenames"]
    with pytest.raises(DataError, match=rf"test/audio\.npy: NaN, infinite or too large values \(beyond 1e\+15\) in "
                                        rf"row 7 \(video {filenames[7]}\)"):
        read_store(store, ["test"], root=root, **DIMS)
    audio[7, 9, 3] = -1e25  # as a store packed before the limit was checked may hold
    np.save(path, audio)
    with pytest.raises(DataError, match=r"test/audio\.npy: NaN, infinite or too large values .* in row 7 "):
        read_store(store, ["test"], root=root, **DIMS)
    read_store(store, ["train"], root=root, **DIMS)  # other splits are fine

    index = json.loads((store / INDEX_FILE).read_text())
    short = json.loads(json.dumps(index))
    short["splits"]["train"]["filenames"].pop()
    unlabeled = json.loads(json.dumps(index))
    del unlabeled["splits"]["train"]["arrays"]["label"]
    for damaged, match in (({"version": 1}, "no 'source'"), ([], "not a JSON object"),
                           (short, "39 video ids for arrays of \\[40\\] rows"),
                           (unlabeled, "split 'train': arrays \\['audio', 'motion', 'visual'\\]")):
        (store / INDEX_FILE).write_text(json.dumps(damaged))
        with pytest.raises(DataError, match=f"damaged store index .*{match}.*--overwrite"):
            read_store(store, ["train"], root=root, **DIMS)
        assert data_main(["pack", str(root), "--audio-dim", "32", "--visual-dim", "32", "--motion-dim", "16"]) == 2
    (store / INDEX_FILE).write_text(json.dumps(index)[:100])  # truncated: still our store, so rebuildable
    assert data_main(["pack", str(root), "--audio-dim", "32", "--visual-dim", "32", "--motion-dim", "16",
                      "--overwrite"]) == 0
    read_store(store, ["train", "val", "test"], root=root, **DIMS)


def test_store_of_another_root_names_both(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_llp(other, num_train=40, num_val=11, num_test=13, seed=6, **DIMS)
    with pytest.raises(DataError, match=rf"packed from \S+/llp, not from {re.escape(str(other))}, whose files differ"):
        read_store(root / "packed", ["train"], root=other, **DIMS)


# ----------------------------------------------------------------------- resident batches
def _resident_data(n: int = 23) -> tuple[list[str], dict[str, torch.Tensor]]:
    return [f"v{i:02d}" for i in range(n)], {"x": torch.arange(n).float()[:, None].repeat(1, 3)}


def test_resident_batches_shuffle_with_the_seed_and_epoch() -> None:
    ids, tensors = _resident_data()
    loader = ResidentBatches(ids, tensors, 5, shuffle=True, seed=7)
    assert len(loader) == 5
    first, second = list(loader), list(loader)  # the epoch advances per iteration
    order = [i for b in first for i in b["id"]]
    assert sorted(order) == ids and order != ids and order != [i for b in second for i in b["id"]]
    for batch in first:  # every row belongs to its id
        assert batch["x"][:, 0].long().tolist() == [ids.index(i) for i in batch["id"]]
    again = ResidentBatches(ids, tensors, 5, shuffle=True, seed=7)
    again.sampler.set_epoch(0)  # what Lightning calls at each epoch start
    assert [i for b in again for i in b["id"]] == order
    plain = list(ResidentBatches(ids, tensors, 5))
    assert [i for b in plain for i in b["id"]] == ids and [len(b["id"]) for b in plain] == [5, 5, 5, 5, 3]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_resident_batches_shard_across_processes(world: int) -> None:
    ids, tensors = _resident_data()
    evals = [[i for b in ResidentBatches(ids, tensors, 4, rank=r, world_size=world) for i in b["id"]]
             for r in range(world)]
    assert sum(evals, []) == ids  # evaluation: each video once, rank order = list order
    trains = [ResidentBatches(ids, tensors, 4, shuffle=True, pad=True, rank=r, world_size=world) for r in range(world)]
    seen = [[i for b in loader for i in b["id"]] for loader in trains]
    assert len({len(s) for s in seen}) == 1 and len({len(t) for t in trains}) == 1  # same steps everywhere
    assert set(sum(seen, [])) == set(ids) and len(sum(seen, [])) - len(ids) < world  # padding < W videos
    with pytest.raises(DataError, match="3 videos for 4 processes"):
        ResidentBatches(ids[:3], {"x": tensors["x"][:3]}, 4, rank=0, world_size=4)


# ------------------------------------------------------------------- pooled-first parsing
class FrameProjectionParser(AVVPParser):
    """HAN's order: ``fc_visual`` on each of the k*T frames, then the mean of each k (reference)."""

    def embed(self, audio: torch.Tensor, visual: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        batch, length = audio.shape[:2]
        v = self.fc_visual(visual)  # (B, kT, H)
        v = v.view(batch, length, -1, v.shape[-1]).mean(dim=2)  # (B, T, H)
        v = self.fc_fusion(torch.cat([v, self.fc_motion(motion)], dim=-1))  # (B, T, H)
        return torch.cat([self.fc_audio(audio), v], dim=0)  # (2B, T, H)


@pytest.mark.parametrize("variant", [dict(architecture="han"),
                                     dict(architecture="base", attention="gcaa", skip=True, adversarial=True)])
def test_pooled_first_equals_frame_projection(variant: dict) -> None:
    torch.manual_seed(0)
    dims = dict(audio_dim=12, visual_dim=48, motion_dim=8, hidden_dim=32, ffn_dim=32)
    parser = AVVPParser(**dims, **variant).eval()
    reference = FrameProjectionParser(**dims, **variant).eval()
    reference.load_state_dict(parser.state_dict())
    audio, frames, motion = torch.randn(3, 10, 12), torch.rand(3, 80, 48), torch.randn(3, 10, 8)
    pooled = frames.view(3, 10, 8, 48).mean(dim=2)  # (B, T, Dv): what the store holds
    with torch.no_grad():
        outs = [parser(audio, pooled, motion), parser(audio, frames, motion), reference(audio, frames, motion)]
    for key in ("video_prob", "audio_prob", "visual_prob", "segment_prob", "features"):
        for other in outs[1:]:
            torch.testing.assert_close(other[key], outs[0][key], rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------- mixed precision
def test_evaluation_under_bf16_autocast_decides_on_float32_probabilities(packed_root: Path) -> None:
    torch.manual_seed(0)
    module = ParserModule(**{k: v for k, v in DIMS.items()}, hidden_dim=32, ffn_dim=32).eval()
    dm = _dm(packed_root, store="packed")
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, pred_a, pred_v = module._decide(batch)
        module.validation_step(batch, 0)
    assert pred_a.dtype == torch.float32
    expected = avvp_scores(pred_a, pred_v, batch["dense_audio"], batch["dense_visual"])
    got = module.val_metrics.compute()
    for key in METRIC_KEYS:
        assert float(got[key]) == pytest.approx(float(expected[key]), abs=1e-12), key
    # the decisions are HAN's rule on float32 probabilities: evaluation leaves autocast (bf16-mixed fit)
    with torch.no_grad():
        out = module.parser(batch["audio"], batch["visual"], batch["motion"])
    seg = out["segment_prob"]
    assert seg.dtype == torch.float32
    assert torch.equal(decide(seg[:, :, 0], seg[:, :, 1], out["video_prob"])[0], pred_a)


def test_cli_fit_from_store_device_resident_bf16(root: Path, tmp_path: Path) -> None:
    args = ["--data.root", str(root), "--data.store", "packed", "--data.device_resident=true",
            "--trainer.precision", "bf16-mixed", "--run.output_dir", str(tmp_path / "out"), "--data.batch_size", "8",
            "--model.hidden_dim", "16", "--model.ffn_dim", "16", "--trainer.enable_progress_bar=false",
            *[f"--data.{k}={v}" for k, v in DIMS.items()]]
    finetune(["fit", *args, "--trainer.max_epochs=1"])
    finetune(["test", *args, "--ckpt_path", "last"])
    result = json.loads((tmp_path / "out" / "base_adv_skip_gcaa" / "seed0" / "test" / "metrics.json").read_text())
    assert result["num_videos"] == 13 and 0.0 <= result["segment/type"] <= 1.0


@pytest.mark.slow
def test_device_resident_test_under_ddp_equals_single_process(root: Path, tmp_path: Path) -> None:
    """2 CPU processes (gloo): 13 test videos split 6 + 7, each scored once, in list order."""
    args = ["--data.root", str(root), "--data.store", "packed", "--data.device_resident=true", "--data.batch_size",
            "4", "--run.output_dir", str(tmp_path / "out"), "--model.hidden_dim", "16", "--model.ffn_dim", "16",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator", "cpu",
            *[f"--data.{k}={v}" for k, v in DIMS.items()]]
    finetune(["fit", *args, "--trainer.max_epochs=1"])
    finetune(["test", *args, "--ckpt_path", "last", "--model.output_dir", str(tmp_path / "single")])
    run_ddp("avvp-finetune", ["test", *args, "--ckpt_path", "last"])  # 2 processes, gloo on loopback
    run_dir = tmp_path / "out" / "base_adv_skip_gcaa" / "seed0"
    ddp, single = (json.loads((folder / "metrics.json").read_text())
                   for folder in (run_dir / "test", tmp_path / "single"))
    assert ddp["num_videos"] == single["num_videos"] == 13
    for key in METRIC_KEYS:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
    for name in ("pred_audio.csv", "pred_visual.csv"):
        assert (run_dir / "test" / name).read_text() == (tmp_path / "single" / name).read_text(), name
