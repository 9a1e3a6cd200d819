"""The ``long`` marker: end-to-end tests whose ground other tests already cover, left out of
the default run (and CI) to keep the suite near 20 minutes on 2 cores; ``--run-long`` (or
FEDPRIV_RUN_LONG=1) runs them too. A skipped one says so, with this reason, under ``-ra``."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-long",
        action="store_true",
        default=False,
        help="also run the tests marked long (end-to-end runs that other tests cover)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-long") or os.environ.get("FEDPRIV_RUN_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long end-to-end test: run with --run-long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
