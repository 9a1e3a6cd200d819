"""Reading settings from TOML: a site's policy file and a simulation's sites file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from common.config.fields import ConfigError, require


def read_toml(file: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {file} cannot be read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} {file} is not valid TOML: {err}") from err


def read_policy_file(file: Path) -> dict[str, Any]:
    """A site's policy file: flat keys of SiteSettings (checked by the caller)."""
    raw = read_toml(file, "policy file")
    require("policy-file" not in raw, f"policy file {file} must not name another policy-file")
    tables = sorted(k for k, v in raw.items() if isinstance(v, dict))
    require(not tables, f"policy file {file}: expected flat keys, found tables {tables}")
    return raw
