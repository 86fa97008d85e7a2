"""Test settings: W&B off (no network, no prompt), data cached in a per-session folder."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")

# the real LLP annotation CSVs: $AVVP_LLP_CSVS, else ../shared/llp beside the checkout (tests skip without them)
SHARED_LLP = Path(os.environ.get("AVVP_LLP_CSVS") or Path(__file__).resolve().parents[2] / "shared" / "llp")


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated default datasets out of the user's cache."""
    if "AVVP_DATA_DIR" not in os.environ:
        os.environ["AVVP_DATA_DIR"] = str(tmp_path_factory.mktemp("avvp_data"))


@pytest.fixture(autouse=True)
def _wandb_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B off in every test, also after one whose offline run made Lightning set WANDB_MODE=dryrun."""
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """torch.compile's (dynamo's) caches empty before and after the test: no graphs leak between tests."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
