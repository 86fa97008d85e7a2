"""Tests for the LLP data layer: CSV parsing, dense truth, features, checks and the datamodules.

References are written from the layout description (NOTES.md section 1), with plain loops and
the ``csv`` module, independently of the pandas-based readers under test.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from avvp_lightning.data.datamodules import LLPDataModule
from avvp_lightning.data.llp import (
    check_dataset, load_features, read_dense_truth, read_weak_labels, video_id, write_dense_csv,
)
from avvp_lightning.data.store import pack_store
from avvp_lightning.data.synthetic import SMALL_DIMS, generate_llp
from avvp_lightning.errors import DataError
from avvp_lightning.labels import CLASS_INDEX, CLASSES, NUM_CLASSES

# the real LLP annotation CSVs: $AVVP_LLP_CSVS, else ../shared/llp beside the checkout (tests skip without them)
SHARED_LLP = Path(os.environ.get("AVVP_LLP_CSVS") or Path(__file__).resolve().parents[2] / "shared" / "llp")
T, C = 10, NUM_CLASSES
DIMS = dict(SMALL_DIMS)  # audio 32, visual 32, motion 16


def reference_dense(rows: list[tuple[str, str, str, str]], filenames: list[str], t: int = T) -> np.ndarray:
    """Segment-by-segment loop: segment s of a listed file is on when int(onset) <= s < int(offset)."""
    gt = np.zeros((len(filenames), t, C), dtype=np.float32)
    for name, onset, offset, label in rows:
        if name not in filenames:
            continue
        for s in range(t):
            if int(float(onset)) <= s < int(float(offset)):
                gt[filenames.index(name), s, CLASS_INDEX[label]] = 1
    return gt


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------------------ dense truth
def test_video_id_is_first_11_characters() -> None:
    assert video_id("BjCEufrlXm4_20_30") == "BjCEufrlXm4"
    assert video_id("-_a-B_c-D_e_8.5_18.5") == "-_a-B_c-D_e"


def test_dense_truth_quirks_match_loop_reference(tmp_path: Path) -> None:
    files = ["aaaaaaaaaaa_0_10", "b-b_b-b_b-b_8.5_18.5", "ccccccccccc_30_40"]
    rows = [
        ("aaaaaaaaaaa_0_10", "0", "1", "Speech"),        # segment 0 only
        ("aaaaaaaaaaa_0_10", "9", "10", "Speech"),       # segment 9 only
        ("aaaaaaaaaaa_0_10", "2", "6", "Dog"),
        ("aaaaaaaaaaa_0_10", "4", "8", "Dog"),           # overlaps the row above: OR
        ("b-b_b-b_b-b_8.5_18.5", "5", "5", "Car"),       # onset == offset: nothing
        ("b-b_b-b_b-b_8.5_18.5", "7", "3", "Cat"),       # onset > offset: nothing
        ("b-b_b-b_b-b_8.5_18.5", "0", "10", "Clapping"),
        ("b-b_b-b_b-b_8.5_18.5", "2.7", "4.2", "Banjo"),  # floats truncate: segments 2, 3
        ("zzzzzzzzz_0_10", "0", "10", "Cello"),          # a file in no split: ignored
        ("ccccccccccc_30_40", "0", "12", "Frying_(food)"),  # offset past the end: clipped
        ("ccccccccccc_30_40", "3", "10.5", "Banjo"),     # truncates to 10: nothing past the end
    ]
    write_tsv(tmp_path / "dense.csv", ["filename", "onset", "offset", "event_labels"], rows)
    with pytest.warns(UserWarning, match=r"dense\.csv: 1 row\(s\) with an onset or offset past the video's 10 "
                                         r"segments \(line 11: 0/12\); read as HAN does"):
        got = read_dense_truth(tmp_path / "dense.csv", files)  # (seconds given as milliseconds would lose all)
    np.testing.assert_array_equal(got, reference_dense(rows, files))
    assert got.shape == (3, T, C) and got.dtype == np.float32
    assert got[0, :, CLASS_INDEX["Dog"]].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert got[1, :, CLASS_INDEX["Car"]].sum() == 0 and got[1, :, CLASS_INDEX["Cat"]].sum() == 0


def test_dense_rows_keyed_by_a_listed_videos_bare_id_warn(tmp_path: Path) -> None:
    files = ["aaaaaaaaaaa_0_10", "bbbbbbbbbbb_30_40"]
    rows = [("aaaaaaaaaaa_0_10", "0", "3", "Speech"),
            ("bbbbbbbbbbb", "2", "4", "Dog"),               # the id alone: HAN ignores it
            ("ccccccccccc", "0", "1", "Cat")]              # no listed video's id: ignored quietly
    write_tsv(tmp_path / "dense.csv", ["filename", "onset", "offset", "event_labels"], rows)
    with pytest.warns(UserWarning, match=r"dense\.csv: 1 row\(s\) name a listed video by its id alone, not its "
                                         r"filename \(line 3: 'bbbbbbbbbbb' for 'bbbbbbbbbbb_30_40'\)"):
        got = read_dense_truth(tmp_path / "dense.csv", files)
    np.testing.assert_array_equal(got, reference_dense(rows, files))  # still read as HAN does
    assert got[1].sum() == 0


def test_dense_truth_random_rows_match_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = [f"{i:011d}_0_10" for i in range(30)]
    rows = [(files[rng.integers(30)] if rng.random() < 0.9 else "nowhere0000_1_11", str(rng.integers(0, 11)),
             str(rng.integers(0, 11)), CLASSES[rng.integers(C)]) for _ in range(400)]
    write_tsv(tmp_path / "dense.csv", ["filename", "onset", "offset", "event_labels"], rows)
    np.testing.assert_array_equal(read_dense_truth(tmp_path / "dense.csv", files), reference_dense(rows, files))


def test_write_dense_csv_round_trips_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    files = [f"vid{i:08d}_{i}_{i + 10}" for i in range(40)]
    dense = (rng.random((40, T, C)) < 0.08).astype(np.float32)
    dense[0] = 0  # a video with nothing
    dense[1, :, 3] = 1  # a full-length run
    write_dense_csv(tmp_path / "pred.csv", files, torch.from_numpy(dense).to(torch.uint8))
    with open(tmp_path / "pred.csv", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t"))
    assert lines[0] == ["filename", "onset", "offset", "event_labels"]
    assert all(row[1].isdigit() and row[2].isdigit() and int(row[1]) < int(row[2]) for row in lines[1:])
    assert ["vid00000001_1_11", "0", "10", CLASSES[3]] in lines
    np.testing.assert_array_equal(read_dense_truth(tmp_path / "pred.csv", files), dense)
    # Maximal runs: no two rows of one file and class touch or overlap.
    runs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for name, on, off, label in lines[1:]:
        runs.setdefault((name, label), []).append((int(on), int(off)))
    assert all(a[1] < b[0] for spans in runs.values() for a, b in zip(sorted(spans), sorted(spans)[1:]))


def test_weak_labels_keep_strings(tmp_path: Path) -> None:
    write_tsv(tmp_path / "s.csv", ["filename", "event_labels"],
              [("NaN", "Speech,Dog"), ("NA_xxxxxxxx_1_11", "Frying_(food)"), ("null", "")])
    with pytest.warns(UserWarning, match=r"s.csv: 1 video\(s\) with an empty event_labels \(line\(s\) 4\)"):
        names, labels = read_weak_labels(tmp_path / "s.csv")
    assert names == ["NaN", "NA_xxxxxxxx_1_11", "null"]
    assert labels.shape == (3, C) and labels.dtype == np.float32
    assert labels[0, [CLASS_INDEX["Speech"], CLASS_INDEX["Dog"]]].tolist() == [1, 1] and labels[0].sum() == 2
    assert labels[1, CLASS_INDEX["Frying_(food)"]] == 1 and labels[2].sum() == 0


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("filename\tevent_labels\nabcdefghijk_0_10\tSpeech\n\n"
                                    "bcdefghijkl_0_10\tSpeech,Drum\n\tDog\n")
    with pytest.raises(DataError) as info:
        read_weak_labels(tmp_path / "s.csv")
    assert f"{tmp_path / 's.csv'}: line 4: unknown class 'Drum'" in str(info.value)
    assert f"{tmp_path / 's.csv'}: line 5: empty filename" in str(info.value)
    problems: list[str] = []
    names, labels = read_weak_labels(tmp_path / "s.csv", problems=problems)
    assert len(problems) == 2 and names[:2] == ["abcdefghijk_0_10", "bcdefghijkl_0_10"]



def test_near_misses_get_a_hint(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("filename\tevent_labels\nabcdefghijk_0_10\tspeech,Baby cry_infant_cry\n")
    with pytest.raises(DataError) as info:
        read_weak_labels(tmp_path / "s.csv")
    assert "line 2: unknown class 'speech' (did you mean 'Speech'?)" in str(info.value)
    assert "line 2: unknown class 'Baby cry_infant_cry' (did you mean 'Baby_cry_infant_cry'?)" in str(info.value)
    (tmp_path / "s.csv").write_bytes("filename\tevent_labels\nabcdefghijk_0_10\tSpeech\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"s\.csv: not UTF-8 text \(it is UTF-16, as Excel's 'Unicode Text' saves\); "
                                        r"save it as UTF-8"):
        read_weak_labels(tmp_path / "s.csv")


def test_filenames_that_are_paths_or_share_an_id_are_named(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("filename\tevent_labels\n/home/me/videos/clip01.mp4\tSpeech\n"
                                    "VID_20230615_101530\tDog\nVID_20230615_143000\tDog\n")
    with pytest.raises(DataError) as info:
        read_weak_labels(tmp_path / "s.csv")
    assert "line 2: filename '/home/me/videos/clip01.mp4' is a path; give the video's name" in str(info.value)
    assert ("line 4: video id 'VID_2023061' is already listed on line 3 (a video's id, the first 11 characters of "
            "its filename, names its feature files)") in str(info.value)


def test_rows_with_extra_fields_are_named_by_line(tmp_path: Path) -> None:
    for where in (2, 3):  # pandas warns on the first data row and fails on a later one: the same problem
        lines = ["filename\tevent_labels", "abcdefghijk_0_10\tSpeech", "bcdefghijkl_0_10\tDog"]
        lines[where - 1] += "\tCat"
        (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / 's.csv'}: 1 row(s) with more tab-separated "
                                                      f"fields than the header's 2: line {where} (3 fields)")):
            read_weak_labels(tmp_path / "s.csv")


def test_dense_rows_with_bad_numbers_or_labels(tmp_path: Path) -> None:
    rows = [("abcdefghijk_0_10", "x", "3", "Dog"), ("abcdefghijk_0_10", "-1", "3", "Dog"),
            ("abcdefghijk_0_10", "0", "3", ""), ("abcdefghijk_0_10", "-0.5", "2", "Cat"),
            ("abcdefghijk_0_10", "0", "3", "Dog")]
    write_tsv(tmp_path / "d.csv", ["filename", "onset", "offset", "event_labels"], rows)
    problems: list[str] = []
    dense = read_dense_truth(tmp_path / "d.csv", ["abcdefghijk_0_10"], problems=problems)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "line 2: onset/offset 'x'/'3' are not numbers", "line 3: negative onset/offset -1/3",
        "line 4: no event label", "line 5: negative onset/offset -0.5/2"]  # (-0.5 would truncate to 0)
    assert dense[0, :, CLASS_INDEX["Dog"]].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert not dense[0, :, CLASS_INDEX["Cat"]].any()
    with pytest.raises(DataError, match=f"4 problems in the file {tmp_path / 'd.csv'}:"):  # the file, not "the dataset"
        read_dense_truth(tmp_path / "d.csv", ["abcdefghijk_0_10"])
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataError, match=r"folder\.csv: not a file \(a folder\?\)"):
        read_dense_truth(tmp_path / "folder.csv", ["abcdefghijk_0_10"])


# ---------------------------------------------------------------------------------- features
def test_load_features_pools_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    frames = rng.random((80, 6), dtype=np.float32)
    np.save(tmp_path / "aaaaaaaaaaa.npy", frames)
    np.save(tmp_path / "bbbbbbbbbbb.npy", frames[::-1].copy())
    names = ["aaaaaaaaaaa_0_10", "bbbbbbbbbbb_5_15", "aaaaaaaaaaa_0_10"]
    pooled = load_features(tmp_path, names, dim=6)
    assert pooled.shape == (3, T, 6) and pooled.dtype == np.float32
    for s in range(T):
        np.testing.assert_allclose(pooled[0, s], frames[8 * s:8 * s + 8].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(pooled[2], pooled[0])
    raw = load_features(tmp_path, names, dim=6, pool=False)
    assert raw.shape == (3, 80, 6)
    np.testing.assert_array_equal(raw[0], frames)
    np.save(tmp_path / "ccccccccccc.npy", frames[:10])  # already one row per segment
    np.testing.assert_array_equal(load_features(tmp_path, ["ccccccccccc_0_10"])[0], frames[:10])


# ------------------------------------------------------------------------- the real LLP CSVs
def _real_rows(name: str) -> list[list[str]]:
    with open(SHARED_LLP / name, newline="") as f:
        return list(csv.reader(f, delimiter="\t"))[1:]


def _fake_feature_root(tmp_path: Path, ids: list[str], shapes: dict[str, tuple[int, int]]) -> None:
    """Copy the real CSVs and link every id to one made-up feature file per folder."""
    for name in ("AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv", "AVVP_eval_audio.csv",
                 "AVVP_eval_visual.csv"):
        shutil.copy(SHARED_LLP / name, tmp_path / name)
    rng = np.random.default_rng(3)
    for folder, shape in shapes.items():
        (tmp_path / folder).mkdir(parents=True)
        source = tmp_path / f"{folder.replace('/', '_')}.npy"
        np.save(source, rng.random(shape, dtype=np.float32))
        for vid in ids:
            os.symlink(source, tmp_path / folder / f"{vid}.npy")


@pytest.mark.slow  # 11849 videos x 3 feature files: 5-15 s
@pytest.mark.skipif(not SHARED_LLP.is_dir(), reason="real LLP CSVs not available")
def test_real_csvs_load_every_split_with_exact_dense_truth(tmp_path: Path) -> None:
    splits = {s: _real_rows(f) for s, f in (("train", "AVVP_train.csv"), ("val", "AVVP_val_pd.csv"),
                                            ("test", "AVVP_test_pd.csv"))}
    ids = sorted({video_id(r[0]) for rows in splits.values() for r in rows})
    # The documented row counts (10 / 80 / 10) with narrow widths keep all 11849 videos cheap.
    _fake_feature_root(tmp_path, ids, {"feats/vggish": (10, 3), "feats/res152": (80, 4),
                                       "feats/r2plus1d_18": (10, 2)})
    dm = LLPDataModule(str(tmp_path), audio_dim=3, visual_dim=4, motion_dim=2, batch_size=512)
    dm.setup("fit")
    dm.setup("test")
    assert {s: len(dm.datasets[s]) for s in splits} == {"train": 10000, "val": 649, "test": 1200}
    dense_rows = {m: [tuple(r) for r in _real_rows(f"AVVP_eval_{m}.csv")] for m in ("audio", "visual")}
    for split in ("val", "test"):
        names = [r[0] for r in splits[split]]
        tensors = dm.datasets[split].tensors
        assert dm.datasets[split].ids == names
        for m in ("audio", "visual"):
            np.testing.assert_array_equal(tensors[f"dense_{m}"].numpy(), reference_dense(dense_rows[m], names))
        weak = np.zeros((len(names), C), np.float32)
        for i, r in enumerate(splits[split]):
            for label in r[1].split(","):
                weak[i, CLASS_INDEX[label]] = 1
        np.testing.assert_array_equal(tensors["label"].numpy(), weak)
    test = dm.datasets["test"].tensors  # the documented test-set quirks
    assert int((test["dense_audio"].sum((1, 2)) == 0).sum()) == 6
    assert int((test["dense_visual"].sum((1, 2)) == 0).sum()) == 121
    assert int(((test["dense_audio"] * test["dense_visual"]).sum((1, 2)) == 0).sum()) == 174
    batch = next(iter(dm.train_dataloader()))
    assert batch["visual"].shape == (512, T, 4) and "dense_audio" not in batch


@pytest.mark.skipif(not SHARED_LLP.is_dir(), reason="real LLP CSVs not available")
def test_real_csvs_test_split_at_real_feature_shapes(tmp_path: Path) -> None:
    ids = sorted({video_id(r[0]) for r in _real_rows("AVVP_test_pd.csv")})
    _fake_feature_root(tmp_path, ids, {"feats/vggish": (10, 128), "feats/res152": (80, 2048),
                                       "feats/r2plus1d_18": (10, 512)})
    dm = LLPDataModule(str(tmp_path), batch_size=100)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["audio"].shape == (100, T, 128) and batch["visual"].shape == (100, T, 2048)
    assert batch["motion"].shape == (100, T, 512) and batch["dense_visual"].shape == (100, T, C)
    assert batch["label"].shape == (100, C) and len(batch["id"]) == 100


# ---------------------------------------------------------------------- a small synthetic root
@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_llp(tmp_path_factory.mktemp("small") / "llp", num_train=24, num_val=10, num_test=12, **DIMS)


@pytest.fixture
def root(small_root: Path, tmp_path: Path) -> Path:
    """A private copy of the small dataset that a test may break."""
    return Path(shutil.copytree(small_root, tmp_path / "llp"))


def _dm(root: Path, **kwargs: object) -> LLPDataModule:
    return LLPDataModule(str(root), batch_size=8, **{**DIMS, **kwargs})


def _names(root: Path, file: str) -> set[str]:
    """The filenames a split CSV lists."""
    return {line.split("\t")[0] for line in (root / file).read_text().splitlines()[1:] if line.strip()}


def _line(root: Path, file: str, n: int) -> list[str]:
    """Line ``n`` (header = 1) of a CSV, split at tabs."""
    return (root / file).read_text().splitlines()[n - 1].split("\t")


def test_datamodule_batches(root: Path) -> None:
    dm = _dm(root)
    dm.setup("fit")
    assert dm.class_names == list(CLASSES) and (dm.audio_dim, dm.visual_dim, dm.motion_dim) == (32, 32, 16)
    train = next(iter(dm.train_dataloader()))
    assert set(train) == {"id", "audio", "visual", "motion", "label"}
    assert train["audio"].shape == (8, T, 32) and train["visual"].shape == (8, T, 32)
    assert train["motion"].shape == (8, T, 16) and train["label"].shape == (8, C)
    assert all(isinstance(i, str) for i in train["id"]) and train["audio"].dtype == torch.float32
    val = list(dm.val_dataloader())  # in CSV order, nothing dropped
    assert sum(len(b["id"]) for b in val) == 10
    listed = [r.split("\t")[0] for r in (root / "AVVP_val_pd.csv").read_text().splitlines()[1:]]
    assert [i for b in val for i in b["id"]] == listed
    assert set(val[0]) == {"id", "audio", "visual", "motion", "label", "dense_audio", "dense_visual"}
    assert val[0]["dense_audio"].shape == (8, T, C)
    torch.manual_seed(0)
    first = [i for b in dm.train_dataloader() for i in b["id"]]
    torch.manual_seed(0)
    assert first == [i for b in dm.train_dataloader() for i in b["id"]]  # seeded shuffling
    assert sorted(first) == sorted(dm.datasets["train"].ids)


def test_datamodule_unpooled_visual_and_predict_list(root: Path) -> None:
    names = [_line(root, "AVVP_test_pd.csv", n)[0] for n in (2, 3, 4)]
    (root / "to_predict.csv").write_text("filename\n" + "\n".join(names) + "\n")
    dm = _dm(root, pool_visual=False, predict_split="to_predict.csv")
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert set(batch) == {"id", "audio", "visual", "motion"} and batch["id"] == names
    assert batch["visual"].shape == (3, 8 * T, 32)
    named = _dm(root, predict_split="val")
    named.setup("predict")
    assert set(next(iter(named.predict_dataloader()))) == {"id", "audio", "visual", "motion", "label"}
    (root / "to_predict.csv").write_text("filename\tevent_labels\n" + "\n".join(f"{n}\tbirthday party" for n in names))
    tagged = _dm(root, predict_split="to_predict.csv")  # the user's own tags in event_labels: not read
    tagged.setup("predict")
    assert tagged.datasets["predict"].ids == names
    for file in ("AVVP_eval_audio.csv", "AVVP_eval_visual.csv"):
        (root / file).unlink()  # predict needs no truth, also on the test split
    on_test = _dm(root, predict_split="test")
    on_test.setup("predict")
    assert len(on_test.datasets["predict"]) == 12
    pack_store(root, **DIMS, splits=["train"])  # a store (say, from the fit's config) is not needed for a list
    (root / "AVVP_train.csv").unlink()  # nor checked against the root
    _dm(root, predict_split="to_predict.csv", store="packed").setup("predict")


def test_datamodule_fits_with_lightning(root: Path) -> None:
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(32, C)

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            prob = torch.sigmoid(self.fc(batch["audio"]).mean(1))  # (B, C)
            return torch.nn.functional.binary_cross_entropy(prob, batch["label"])

        def validation_step(self, batch: dict, _: int) -> None:
            assert "dense_audio" in batch

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Tiny(), datamodule=_dm(root))


# ---------------------------------------------------------------------------------- bad input
def _error(root: Path, stage: str = "fit", **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        _dm(root, **kwargs).setup(stage)
    return str(info.value)


def test_good_dataset_has_no_problems(root: Path) -> None:
    assert check_dataset(root, **DIMS) == []


def test_missing_empty_and_malformed_csvs(root: Path) -> None:
    (root / "AVVP_val_pd.csv").unlink()
    assert "AVVP_val_pd.csv: file not found" in _error(root)
    (root / "AVVP_train.csv").write_text("")
    message = _error(root)
    assert "AVVP_train.csv: empty file" in message and "AVVP_val_pd.csv" in message  # all problems listed
    (root / "AVVP_train.csv").write_text("filename\tevent_labels\n")
    assert "AVVP_train.csv: empty file" in _error(root)
    (root / "AVVP_test_pd.csv").write_text("filename\tlabels\nabcdefghijk_0_10\tSpeech\n")
    assert "AVVP_test_pd.csv: missing column(s) event_labels" in _error(root, "test")
    (root / "AVVP_test_pd.csv").write_text("filename,event_labels\nabcdefghijk_0_10,Speech\n")
    assert "AVVP_test_pd.csv: missing column(s) filename, event_labels" in _error(root, "test")


def test_missing_root_is_one_problem(root: Path) -> None:
    assert _error(root / "nowhere") == f"{root / 'nowhere'}: not found (the dataset root, in the official LLP layout)"
    assert check_dataset(root / "AVVP_train.csv", **DIMS) == [
        f"{root / 'AVVP_train.csv'}: not a folder (the dataset root, in the official LLP layout)"]


def test_unreadable_feature_file_says_so(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, load = video_id(_line(root, "AVVP_train.csv", 2)[0]), np.load

    def forbidden(path: object, *args: object, **kwargs: object) -> object:  # (root may read anything)
        if Path(str(path)).stem == target:
            raise PermissionError(13, "Permission denied", str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", forbidden)
    assert f"{root / 'feats' / 'vggish' / target}.npy: cannot be read (permission denied)" in _error(root)


def test_dense_truth_that_names_no_listed_video_is_an_error(root: Path) -> None:
    header, audio, visual = "filename\tonset\toffset\tevent_labels\n", root / "AVVP_eval_audio.csv", root / "AVVP_eval_visual.csv"
    original = audio.read_text(), visual.read_text()
    lines = audio.read_text().splitlines()  # ids only: no row names a listed file
    audio.write_text("\n".join([lines[0], *(line[:11] + line[line.index("\t"):] for line in lines[1:])]))
    expected = f"{audio}: none of its rows names a listed val or test video (its rows name '"
    for stage in ("fit", "test"):  # whichever split is loaded
        assert expected in _error(root, stage) and str(visual) not in _error(root, stage)
    assert expected in check_dataset(root, **DIMS)[0]
    audio.write_text(header)  # header only: no audio events at all, possible in a small set: a warning
    with pytest.warns(UserWarning, match=f"{re.escape(str(audio))} has no rows: no video of test has audio events"):
        _dm(root).setup("test")
    visual.write_text(header)  # neither has rows: the videos' weak labels have events, so an error
    assert f"{audio} and {visual}: no row names any of the 12 videos listed in" in _error(root, "test")
    test_lines = (root / "AVVP_test_pd.csv").read_text().splitlines()[1:]  # one split matched, the other not
    for path, text in zip((audio, visual), original):
        path.write_text("\n".join(line for line in text.splitlines() if not any(
            line.startswith(t.split("\t")[0] + "\t") for t in test_lines)) + "\n")
    assert (f"{audio} and {visual}: no row names any of the 12 videos listed in {root / 'AVVP_test_pd.csv'} "
            f"(such as '{_line(root, 'AVVP_test_pd.csv', 2)[0]}')") in check_dataset(root, **DIMS)[0]


def test_dense_rows_of_train_videos_only_or_of_an_absent_list(root: Path) -> None:
    audio, visual = root / "AVVP_eval_audio.csv", root / "AVVP_eval_visual.csv"
    header = audio.read_text().splitlines()[0]
    train = [_line(root, "AVVP_train.csv", n)[0] for n in (2, 3)]
    audio.write_text("\n".join([header, *(f"{name}\t0\t3\tDog" for name in train)]) + "\n")
    assert f"{audio}: none of its rows names a listed val or test video" in _error(root, "test")
    audio.write_text("\n".join([header, *(line for line in visual.read_text().splitlines()[1:]
                                          if line.split("\t")[0] not in _names(root, "AVVP_test_pd.csv"))]) + "\n")
    (root / "AVVP_val_pd.csv").unlink()  # rows of val videos only, val's list absent: maybe right, so a warning
    with pytest.warns(UserWarning, match=f"{re.escape(str(audio))}: none of its rows names a listed val or test"):
        _dm(root).setup("test")


def test_a_split_without_events_of_one_modality_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "one"  # one test video, its event audio-only: no visual rows name a test video
    generate_llp(root, num_train=4, num_val=2, num_test=1, seed=1, **DIMS)
    test = _line(root, "AVVP_test_pd.csv", 2)[0]
    visual = root / "AVVP_eval_visual.csv"
    visual.write_text("\n".join(line for line in visual.read_text().splitlines() if not line.startswith(test)) + "\n")
    for splits in (["test"], ["val", "test"]):
        assert check_dataset(root, splits, **DIMS) == []
    pack_store(root, **DIMS)  # one split at a time: the same verdict


def test_unknown_classes_name_file_line_and_label(root: Path) -> None:
    lines = (root / "AVVP_train.csv").read_text().splitlines()
    lines[3] = lines[3] + ",Dragon"  # line 4 of the file
    (root / "AVVP_train.csv").write_text("\n".join(lines) + "\n")
    with open(root / "AVVP_eval_visual.csv", "a") as f:
        f.write(f"{_line(root, 'AVVP_val_pd.csv', 2)[0]}\t0\t3\tUnicorn\n")
    n_dense = len((root / "AVVP_eval_visual.csv").read_text().splitlines())
    message = _error(root)
    assert f"{root / 'AVVP_train.csv'}: line 4: unknown class 'Dragon'" in message
    assert f"{root / 'AVVP_eval_visual.csv'}: line {n_dense}: unknown class 'Unicorn'" in message


def test_bad_feature_files_are_named(root: Path) -> None:
    ids = [video_id(_line(root, "AVVP_train.csv", n)[0]) for n in range(2, 9)]
    audio, visual = root / "feats" / "vggish", root / "feats" / "res152"
    (audio / f"{ids[0]}.npy").unlink()
    np.save(audio / f"{ids[1]}.npy", np.zeros((9, 32), np.float32))
    np.save(visual / f"{ids[2]}.npy", np.full((80, 32), np.nan, np.float32))
    bad = np.ones((10, 32), np.float32)
    bad[3, 4] = np.inf
    np.save(audio / f"{ids[3]}.npy", bad)
    whole = (visual / f"{ids[4]}.npy").read_bytes()
    (visual / f"{ids[4]}.npy").write_bytes(whole[: len(whole) // 2])
    (audio / f"{ids[5]}.npy").write_bytes(b"these are not the features you are looking for")
    np.save(audio / f"{ids[6]}.npy", np.zeros((10, 32), np.int64))
    message = _error(root)
    assert f"{audio / ids[0]}.npy: missing feature file for video '{_line(root, 'AVVP_train.csv', 2)[0]}' " \
           f"({root / 'AVVP_train.csv'}, line 2)" in message
    assert f"{audio / ids[1]}.npy: wrong shape (9, 32), expected (10, 32): one row per segment" in message
    assert f"{visual / ids[2]}.npy: contains NaN values" in message
    assert f"{audio / ids[3]}.npy: contains inf values" in message
    assert f"{visual / ids[4]}.npy: not a readable .npy file, truncated or corrupt" in message
    assert f"{audio / ids[5]}.npy: not a .npy file (no NUMPY header)" in message
    assert f"{audio / ids[6]}.npy: dtype int64, expected float32" in message
    assert len(check_dataset(root, **DIMS)) == 7
    np.save(audio / f"{ids[1]}.npy", np.zeros((10, 31), np.float32))  # the width is checked too
    assert "wrong shape (10, 31), expected (10, 32)" in _error(root)
    np.save(audio / f"{ids[1]}.npy", np.zeros((80, 32), np.float32))  # frames are for the visual features only
    assert f"{audio / ids[1]}.npy: wrong shape (80, 32), expected (10, 32): one row per segment" in _error(root)
    np.save(audio / f"{ids[1]}.npy", np.zeros((10, 32), np.float32))
    np.save(visual / f"{ids[1]}.npy", np.zeros((75, 32), np.float32))
    assert f"{visual / ids[1]}.npy: wrong shape (75, 32), expected (10*k, 32) for a whole k >= 1" in _error(root)
    for name in ids[:2]:  # videos of another length (one row per segment): the option named first
        np.save(audio / f"{name}.npy", np.zeros((20, 32), np.float32))
    assert _error(root).split("\n")[1].endswith(f"{audio}: 2 files have 20 rows where 10 segments are expected; "
                                                "for videos of 20 segments, give --data.num_segments 20 (avvp-data: "
                                                "--num-segments 20)")
    (audio / f"{ids[0]}.npy").unlink()
    np.save(audio / f"{ids[1]}.npy", np.zeros((10, 32), np.float32))
    np.savez(audio / f"{ids[0]}.npz", np.zeros((10, 32), np.float32))  # saved with savez: not read
    assert f"{audio / ids[0]}.npy: missing feature file ({ids[0]}.npz is there: features are one .npy array " \
           "per video)" in _error(root)
    np.save(visual / f"{ids[1]}.npy", np.full((80, 32), 3e38, np.float32))  # finite, but their sum is not
    assert f"{visual / ids[1]}.npy: values too large (up to 3e+38, limit 1e+15; real features stay far below it" \
        in _error(root)
    np.save(visual / f"{ids[1]}.npy", np.zeros((80, 32), np.float32))
    garbage = np.zeros((10, 32), np.float32)  # one value of an uninitialised array: training would turn it into NaN
    garbage[3, 4] = -1e25
    np.save(audio / f"{ids[1]}.npy", garbage)
    assert f"{audio / ids[1]}.npy: values too large (up to 1e+25, limit 1e+15; " in _error(root)
    np.save(audio / f"{ids[1]}.npy", np.full((10, 32), 1e300))  # float64 beyond float32's range: not "inf"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert f"{audio / ids[1]}.npy: values too large (up to 1e+300, limit 1e+15; " in _error(root)
    assert not [w for w in caught if "float64" in str(w.message)]  # refused, so not "cast to float32"
    np.save(audio / f"{ids[1]}.npy", np.full((10, 32), -1e15))  # the limit itself is accepted (float64: exact)
    assert not any(ids[1] in problem for problem in check_dataset(root, **DIMS))
    np.save(audio / f"{ids[1]}.npy", np.zeros((10, 32), np.float32))
    (audio / f"{ids[1]}.npy").unlink()
    (audio / f"{ids[1]}.npy").mkdir()  # a folder where the file should be
    assert f"{audio / ids[1]}.npy: not a file (a folder?) for video '" in _error(root)
    (audio / f"{ids[1]}.npy").rmdir()
    np.save(audio / f"{ids[1]}.npy", np.zeros((10, 32), np.float32))
    message = _error(root, audio_dim=128)  # every audio file is 32 wide: a hint says what to set
    assert f"{audio}: 31 files are 32 wide where 128 is expected; if they are the features you want, " \
           "set this folder's feature size to 32 (--data.audio_dim, visual_dim or motion_dim; avvp-data: --audio-dim" \
           in message


def test_video_in_two_splits(root: Path) -> None:
    leaked = _line(root, "AVVP_train.csv", 5)
    with open(root / "AVVP_test_pd.csv", "a") as f:
        f.write("\t".join(leaked) + "\n")
    n_test = len((root / "AVVP_test_pd.csv").read_text().splitlines())
    message = _error(root, "test")
    assert f"video id '{video_id(leaked[0])}' is listed in two splits: {root / 'AVVP_train.csv'}, line 5 " \
           f"and {root / 'AVVP_test_pd.csv'}, line {n_test}" in message


def test_float64_features_warn_once_and_cast(root: Path) -> None:
    audio = root / "feats" / "vggish"
    names = [_line(root, f, 2)[0] for f in ("AVVP_train.csv", "AVVP_val_pd.csv")]  # two splits
    originals = [np.load(audio / f"{video_id(n)}.npy") for n in names]
    for name, array in zip(names, originals):
        np.save(audio / f"{video_id(name)}.npy", array.astype(np.float64) + 1e-12)
    dm = _dm(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    cast = [w for w in caught if "float64" in str(w.message)]
    assert len(cast) == 1 and str(audio) in str(cast[0].message)
    assert dm.datasets["train"].tensors["audio"].dtype == torch.float32
    np.testing.assert_allclose(dm.datasets["val"].tensors["audio"][0].numpy(), originals[1], rtol=1e-6)
    half = originals[0].astype(np.float16)
    np.save(audio / f"{video_id(names[0])}.npy", half)  # float16 widens exactly, without a warning
    dm = _dm(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    assert not [w for w in caught if "float16" in str(w.message)]
    assert np.array_equal(dm.datasets["train"].tensors["audio"][0].numpy(), half.astype(np.float32))


def test_big_endian_features_and_padded_header_names_read_as_usual(root: Path) -> None:
    audio = root / "feats" / "vggish"
    name = _line(root, "AVVP_train.csv", 2)[0]
    original = np.load(audio / f"{video_id(name)}.npy")
    np.save(audio / f"{video_id(name)}.npy", original.astype(">f4"))  # e.g. written on a big-endian machine
    lines = (root / "AVVP_train.csv").read_text().splitlines()
    (root / "AVVP_train.csv").write_text("\n".join(["filename \t event_labels ", *lines[1:]]) + "\n")
    dm = _dm(root)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.datasets["train"].tensors["audio"][0].numpy(), original)


def test_many_problems_are_summarized(root: Path) -> None:
    shutil.rmtree(root / "feats" / "vggish")
    (root / "feats" / "vggish").mkdir()
    message = _error(root)
    assert "problems in the LLP dataset" in message and "more (`avvp-data check ROOT` lists them all)" in message
    assert len(check_dataset(root, **DIMS)) == 24 + 10 + 12
