"""Tests for the synthetic LLP generator, the snippet set, the default cache and ``avvp-data``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import avvp_lightning.data.synthetic as synthetic
from avvp_lightning.data.cli import main
from avvp_lightning.data.datamodules import LLPDataModule, SnippetDataModule
from avvp_lightning.data.llp import check_dataset, read_dense_truth, read_weak_labels, video_id
from avvp_lightning.data.synthetic import SMALL_DIMS, default_root, generate_llp, generate_snippets
from avvp_lightning.errors import DataError
from avvp_lightning.labels import CLASS_INDEX, NUM_CLASSES

DIMS = dict(SMALL_DIMS)
TINY = dict(num_train=8, num_val=4, num_test=4, **DIMS)
FILENAME = re.compile(r"^[A-Za-z0-9_-]{11}_(\d+|\d+\.\d)_(\d+|\d+\.\d)$")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """600 evaluated videos (small dims) and their truth, to look at the planted structure."""
    root = generate_llp(tmp_path_factory.mktemp("big") / "llp", num_train=300, num_val=300, num_test=300, **DIMS)
    names, weak = [], []
    for split in ("AVVP_val_pd.csv", "AVVP_test_pd.csv"):
        n, w = read_weak_labels(root / split)
        names, weak = names + n, weak + [w]
    dense = {m: read_dense_truth(root / f"AVVP_eval_{m}.csv", names) for m in ("audio", "visual")}  # (N, T, C)
    return {"root": root, "names": names, "weak": np.concatenate(weak), **dense}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate_llp(tmp_path / "a", seed=5, **TINY))
    b = _files(generate_llp(tmp_path / "b", seed=5, **TINY))
    c = _files(generate_llp(tmp_path / "c", seed=6, **TINY))
    assert a == b
    assert a.keys() != c.keys() and a["AVVP_train.csv"] != c["AVVP_train.csv"]


def test_layout_is_the_official_one(big: dict) -> None:
    root = big["root"]
    assert check_dataset(root, **DIMS) == []
    for name in ("AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv",
                 "AVVP_eval_audio.csv", "AVVP_eval_visual.csv"):
        header = (root / name).read_text().splitlines()[0]
        assert header == ("filename\tevent_labels" if "pd" in name or "train" in name else
                          "filename\tonset\toffset\tevent_labels")
    train, _ = read_weak_labels(root / "AVVP_train.csv")
    everything = train + big["names"]
    assert all(FILENAME.match(n) for n in everything) and len({video_id(n) for n in everything}) == 900
    assert any("." in n for n in everything)  # a few decimal starts, as in LLP
    vid = video_id(everything[0])
    shapes = {d: np.load(root / "feats" / d / f"{vid}.npy") for d in ("vggish", "res152", "r2plus1d_18")}
    assert {d: a.shape for d, a in shapes.items()} == {"vggish": (10, 32), "res152": (80, 32),
                                                       "r2plus1d_18": (10, 16)}
    assert all(a.dtype == np.float32 and (a >= 0).all() for a in shapes.values())


def test_real_dims(tmp_path: Path) -> None:
    root = generate_llp(tmp_path / "real", num_train=3, num_val=2, num_test=2)
    assert check_dataset(root) == []
    vid = video_id(read_weak_labels(root / "AVVP_train.csv")[0][0])
    assert np.load(root / "feats" / "res152" / f"{vid}.npy").shape == (80, 2048)


def test_dense_truth_matches_weak_labels_and_has_the_real_quirks(big: dict) -> None:
    present = np.maximum(big["audio"].max(1), big["visual"].max(1))  # (N, C)
    np.testing.assert_array_equal(present, big["weak"])
    assert set(big["weak"].sum(1)) <= {1, 2, 3}
    rows = [r.split("\t") for r in (big["root"] / "AVVP_eval_audio.csv").read_text().splitlines()[1:]]
    assert any(int(on) >= int(off) for _, on, off, _ in rows)
    assert any(name not in big["names"] for name, *_ in rows)


def test_events_vary_in_length_and_position(big: dict) -> None:
    runs = np.concatenate([big["audio"], big["visual"]])  # (2N, T, C)
    on = runs.transpose(0, 2, 1).reshape(-1, 10)  # (2N*C, T)
    on = on[on.any(1)]
    assert (on[:, 0] == 1).mean() > 0.3 and (on[:, 9] == 1).mean() > 0.3
    assert 0.15 < on.all(1).mean() < 0.6  # full-length events, but not only
    assert len(set(on.sum(1).astype(int))) == 10  # every length 1..10


def test_modality_rates_depend_on_the_class(big: dict) -> None:
    heard, seen = big["audio"].max(1), big["visual"].max(1)  # (N, C)

    def rates(name: str) -> tuple[float, float, float]:
        c = CLASS_INDEX[name]
        has = big["weak"][:, c] == 1
        a, v = heard[has, c], seen[has, c]
        return float((a * (1 - v)).mean()), float((v * (1 - a)).mean()), float((a * v).mean())

    assert rates("Speech")[0] > 0.45 and rates("Speech")[0] > 3 * rates("Speech")[1]
    for name in ("Car", "Vacuum_cleaner"):
        assert rates(name)[1] > 0.4 and rates(name)[1] > 2 * rates(name)[0]
    for name in ("Cello", "Violin_fiddle", "Accordion"):
        assert rates(name)[2] > 0.6
    assert big["weak"][:, CLASS_INDEX["Speech"]].mean() > 2 * big["weak"].mean()  # Speech is frequent


def test_features_carry_the_planted_structure(big: dict) -> None:
    dm = LLPDataModule(str(big["root"]), **DIMS)
    dm.setup("test")
    test = dm.datasets["test"].tensors
    audio, visual, motion = (test[k].numpy().reshape(-1, test[k].shape[-1]) for k in ("audio", "visual", "motion"))
    heard = test["dense_audio"].numpy().reshape(-1, NUM_CLASSES)  # (N*T, C)
    # A segment's audio is closer to the mean of its class's segments than to other classes' means.
    single = heard.sum(1) == 1
    means = np.stack([audio[single & (heard[:, c] == 1)].mean(0) for c in range(NUM_CLASSES)])  # (C, Da)
    nearest = np.argmin(((audio[single][:, None] - means[None]) ** 2).sum(-1), axis=1)
    accuracy = (nearest == heard[single].argmax(1)).mean()
    assert 0.3 < accuracy < 0.999  # learnable, not trivial
    # Confusable pairs share part of their prototype.
    world = synthetic._make_world(0, **DIMS)
    protos = world.protos["audio"]  # (C, L)
    pair = protos[CLASS_INDEX["Cello"]] @ protos[CLASS_INDEX["Violin_fiddle"]]
    assert pair == pytest.approx(synthetic.CONFUSION, abs=1e-6)
    # Motion is predictable from the visual features, far less from the audio ones.
    def r2(x: np.ndarray, y: np.ndarray) -> float:
        x1 = np.c_[x, np.ones(len(x))]
        residual = y - x1 @ np.linalg.lstsq(x1, y, rcond=None)[0]
        return 1 - residual.var() / y.var()
    assert r2(visual, motion) > 0.4 and r2(audio, motion) < 0.2
    # Visual frames jitter within a segment.
    frames = np.load(big["root"] / "feats" / "res152" / f"{video_id(big['names'][0])}.npy").reshape(10, 8, -1)
    assert (frames.std(1) > 0).mean() > 0.5


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_features", fail)
    with pytest.raises(KeyboardInterrupt):
        generate_llp(tmp_path / "llp", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_existing_root_is_kept_unless_overwrite(tmp_path: Path) -> None:
    root = generate_llp(tmp_path / "llp", seed=1, **TINY)
    before = _files(root)
    with pytest.raises(FileExistsError):
        generate_llp(root, seed=2, **TINY)
    assert _files(root) == before
    generate_llp(root, seed=2, overwrite=True, **TINY)
    assert _files(root) != before and sorted(p.name for p in tmp_path.iterdir()) == ["llp"]


def test_default_root_is_cached_and_safe_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVVP_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(synthetic, "DEFAULT_LLP", dict(TINY))
    with ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: default_root(), range(2)))
    assert roots[0] == roots[1] and roots[0].parent == tmp_path
    assert roots[0].name.startswith(f"synthetic-llp-v{synthetic.GENERATOR_VERSION}-")
    assert [p.name for p in tmp_path.iterdir()] == [roots[0].name]  # no temporary folder left
    stamp = (roots[0] / "AVVP_train.csv").stat().st_mtime_ns
    assert default_root() == roots[0] and (roots[0] / "AVVP_train.csv").stat().st_mtime_ns == stamp
    monkeypatch.setattr(synthetic, "DEFAULT_LLP", dict(TINY, num_train=9))  # other parameters, other folder
    assert default_root() != roots[0]
    dm = LLPDataModule(**DIMS)  # root=None uses the default
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 9


def test_a_cache_folder_that_is_a_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("AVVP_DATA_DIR", str(tmp_path / "afile"))
    with pytest.raises(DataError, match="afile: a file, not a folder \\(AVVP_DATA_DIR must name a folder"):
        default_root("llp")


def test_snippets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = generate_snippets(tmp_path / "snip", num_videos=20, seed=0, **DIMS)
    lines = (root / "snippets.csv").read_text().splitlines()
    assert lines[0] == "filename\tevent_labels" and len(lines) == 21
    dm = SnippetDataModule(str(root), val_fraction=0.25, batch_size=4, audio_dim=32, visual_dim=32)
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (15, 5)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"id", "audio", "visual"} and batch["visual"].shape == (4, 10, 32)
    assert set(dm.datasets["train"].ids).isdisjoint(dm.datasets["val"].ids)
    for missing in (tmp_path / "nowhere", root / "snippets.csv"):  # the root itself is named, not its contents
        for list_csv in ("snippets.csv", str(root / "snippets.csv")):  # (features under the root in both)
            with pytest.raises(DataError, match=rf"^{re.escape(str(missing))}: not (found|a folder) \(the snippet"):
                SnippetDataModule(str(missing), list_csv=list_csv, audio_dim=32, visual_dim=32).setup("fit")
    absolute = SnippetDataModule(str(tmp_path / "nowhere"), list_csv=str(root / "snippets.csv"), audio_dim=32,
                                 visual_dim=32, audio_dir=str(root / "feats" / "vggish"),
                                 visual_dir=str(root / "feats" / "res152"))
    absolute.setup("fit")  # absolute lists and folders need no root
    one = tmp_path / "one"
    shutil.copytree(root, one)
    (one / "snippets.csv").write_text("\n".join(lines[:2]) + "\n")
    with pytest.warns(UserWarning, match=r"1 listed video\(s\), none held out for validation .*no best\.ckpt"):
        SnippetDataModule(str(one), val_fraction=0.25, audio_dim=32, visual_dim=32).setup("fit")
    llp = generate_llp(tmp_path / "llp", **TINY)  # an LLP root works too: train and val splits
    dm = SnippetDataModule(str(llp), audio_dim=32, visual_dim=32)
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (8, 4)
    monkeypatch.setenv("AVVP_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "DEFAULT_SNIPPETS", {"num_videos": 10, **DIMS})
    dm = SnippetDataModule(audio_dim=32, visual_dim=32)
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 10


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "llp"
    assert main(["generate", str(root), "--train", "6", "--val", "3", "--test", "3", "--small-dims"]) == 0
    dims = ["--audio-dim", "32", "--visual-dim", "32", "--motion-dim", "16"]
    assert main(["check", str(root), *dims]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and re.search(r"test\s+3 videos", out) and "(80, 32) float32" in out
    for bad in (["--num-segments", "0"], ["--audio-dim", "-1"]):  # sizes are whole numbers >= 1: a usage error
        with pytest.raises(SystemExit) as info:
            main(["check", str(root), *dims, *bad])
        assert info.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    assert main(["generate", str(root), "--small-dims"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    vid = video_id((root / "AVVP_val_pd.csv").read_text().splitlines()[1])
    (root / "feats" / "vggish" / f"{vid}.npy").unlink()
    assert main(["check", str(root), *dims]) == 1
    assert f"{vid}.npy: missing feature file" in capsys.readouterr().out
    listed = root / "mine.csv"  # a predict list alone: the split CSVs are not checked
    listed.write_text("filename\n" + (root / "AVVP_test_pd.csv").read_text().splitlines()[1].split("\t")[0] + "\n")
    for split in ("AVVP_train.csv", "AVVP_val_pd.csv"):
        (root / split).unlink()
    assert main(["check", str(root), *dims, "--list", str(listed)]) == 0
    assert re.search(r"predict\s+1 videos", capsys.readouterr().out)
    assert main(["check", str(root), *dims, "--list", str(listed), "--splits", "val"]) == 1
    assert "AVVP_val_pd.csv: file not found" in capsys.readouterr().out
    assert main(["generate-snippets", str(tmp_path / "snip"), "--videos", "5", "--small-dims"]) == 0
    assert (tmp_path / "snip" / "snippets.csv").is_file()
    monkeypatch.setenv("AVVP_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "DEFAULT_LLP", dict(TINY))
    capsys.readouterr()
    assert main(["default"]) == 0
    assert Path(capsys.readouterr().out.strip()) == default_root()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "generate-snippets" in capsys.readouterr().out


def test_a_killed_writers_temporary_folder_is_removed_by_the_next(tmp_path: Path) -> None:
    """A pack or generate killed mid-write leaves its temporary sibling; the next write on this
    machine removes it when its process is gone, and leaves a live writer's and any other alone."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # its process has exited
    prefix = synthetic._sibling_prefix(tmp_path / "llp", "tmp")
    orphan = tmp_path / f"{prefix}{dead}-0badc0de"
    keep = [tmp_path / f"{prefix}{os.getpid()}-1234abcd",  # a live writer
            tmp_path / f"{prefix}7-{dead}-0badc0de",  # host "<this host>-7", pid 7 is not ours to judge
            tmp_path / ".llp.tmp-otherhost-1-deadbeef"]
    for folder in (orphan, *keep):
        folder.mkdir()
        (folder / "half.npy").write_bytes(b"partial")
    generate_llp(tmp_path / "llp", num_train=4, num_val=2, num_test=2, seed=0, **SMALL_DIMS)
    assert not orphan.exists() and all(folder.exists() for folder in keep)


def test_generate_overwrite_replaces_only_a_generated_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "AVVP_train.csv").write_text("filename\tevent_labels\n")
    with pytest.raises(FileExistsError, match="not written by this tool"):
        generate_llp(real, num_train=4, num_val=2, num_test=2, seed=0, overwrite=True, **SMALL_DIMS)
    assert main(["generate", str(real), "--small-dims", "--overwrite"]) == 2
    assert "no synthetic.json" in capsys.readouterr().err
    assert os.listdir(real) == ["AVVP_train.csv"]
    generate_llp(tmp_path / "gen", num_train=4, num_val=2, num_test=2, seed=0, **SMALL_DIMS)
    generate_llp(tmp_path / "gen", num_train=4, num_val=2, num_test=2, seed=1, overwrite=True, **SMALL_DIMS)
