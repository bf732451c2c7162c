from __future__ import annotations

from pathlib import Path

import pytest
from datafakes import write_pickles


@pytest.fixture
def fake_pickles(tmp_path) -> tuple[Path, dict[str, str]]:
    """A complete fake ``cifar-10-batches-py`` folder (20 images per batch) and its md5 table."""
    folder = tmp_path / "cifar-10-batches-py"
    return folder, write_pickles(folder)
