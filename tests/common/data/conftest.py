"""One asset cache for the whole test session: each asset is downloaded at most once per run.

An already-set FEDPRIV_CACHE is used as is (so a filled cache makes the tests run offline).
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def asset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("FEDPRIV_CACHE"):
            patch.setenv("FEDPRIV_CACHE", str(tmp_path_factory.mktemp("fedpriv-cache")))
        yield Path(os.environ["FEDPRIV_CACHE"])
