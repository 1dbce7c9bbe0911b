"""Test-wide settings: offline, no progress bars, one thread (tiny tensors run faster and the same
on every machine), decoded-image cache in a per-session temporary folder."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TAILSYNTH_PROGRESS"] = "0"
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    os.environ["TAILSYNTH_CACHE"] = str(tmp_path_factory.mktemp("tailsynth-cache"))
    yield
