"""Named weights on disk: find a registered name's file in the cache, or download it there once, verified.

The cache is `$MULTIMAE_HOME/weights/<name>/` (default: `$XDG_CACHE_HOME/multimae`, else `~/.cache/multimae`).
`MULTIMAE_WEIGHTS_URL` replaces the base URL of every file (a mirror, an air-gapped copy); `MULTIMAE_OFFLINE=1`
or `HF_HUB_OFFLINE=1` forbids downloading. The download is torch.hub's: a temporary file in the cache folder,
the sha256 checked against the registered hash (or its prefix) before the file is renamed into place, so a
killed, cut or corrupt download leaves nothing in the cache.
"""

from __future__ import annotations

import http.client
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..plugin.weights import Weights

_LICENCES_SHOWN: set[str] = set()


def cache_dir() -> Path:
    home = os.environ.get("MULTIMAE_HOME")
    if home:
        return Path(home) / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "multimae" / "weights"


def offline() -> bool:
    return any(os.environ.get(key, "").lower() in ("1", "true", "yes")
               for key in ("MULTIMAE_OFFLINE", "HF_HUB_OFFLINE"))


def source_url(record) -> str:
    base = os.environ.get("MULTIMAE_WEIGHTS_URL")
    return f"{base.rstrip('/')}/{record.filename}" if base else record.url


def resolve_weights(name: str | Path) -> tuple[Path, dict[str, Any]]:
    """An existing path as it is (no overrides), or a registered name's cached file (downloaded on first use)
    and the model settings its file cannot tell. Anything else is one line listing the names."""
    from ..plugin.registry import get_registry

    path = Path(name)
    if path.exists():
        record = record_of(path)
        return path, dict(record.overrides) if record is not None else {}
    known = get_registry().weights()
    if str(name) not in known:
        raise CheckpointError(f"{name}: no such file or folder, and not a weights name (names: "
                              f"{', '.join(sorted(known)) or 'none registered'}; `multimae models` lists them)")
    record = known[str(name)]
    return fetch(record), dict(record.overrides)


def record_of(checkpoint: str | Path) -> Weights | None:
    """The registered weights a checkpoint is: by name, or by its path in the cache (reached through
    `find_checkpoint` or the `multimae:` teacher); None for any other file."""
    from ..plugin.registry import get_registry

    known = get_registry().weights()
    if str(checkpoint) in known:
        return known[str(checkpoint)]
    path = Path(checkpoint)
    if path.exists() and path.parent.parent.resolve() == cache_dir().resolve():
        return known.get(path.parent.name)
    return None


def cached_path(record) -> Path:
    """`<cache>/<name>/<file name>`: one folder per name, so a path in the cache tells its name."""
    return cache_dir() / record.name / record.filename


def fetch(record) -> Path:
    """The record's file in the cache, downloading and verifying it first if it is not there."""
    target = cached_path(record)
    if target.is_file():
        return target
    url = source_url(record)
    if offline():
        raise CheckpointError(f"{record.name}: not in the cache and downloads are off (MULTIMAE_OFFLINE / "
                              f"HF_HUB_OFFLINE); download {url} and put it at {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if record.licence and record.name not in _LICENCES_SHOWN:
        _LICENCES_SHOWN.add(record.name)
        print(f"note: {record.name} is licensed {record.licence}; downloading {url}"
              + (f" ({record.size / 1e6:.0f} MB)" if record.size else ""), file=sys.stderr)
    from torch.hub import download_url_to_file

    try:
        download_url_to_file(url, str(target), hash_prefix=record.sha256, progress=sys.stderr.isatty())
    except RuntimeError as exc:  # torch.hub's hash check
        raise CheckpointError(f"{record.name}: the download from {url} does not match the registered sha256 (a "
                              f"cut or changed file: {exc}); nothing was cached") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # no server, HTTP errors, a cut connection
        raise CheckpointError(f"{record.name}: cannot download {url} ({type(exc).__name__}: {exc}); download it "
                              f"and put it at {target}") from None
    return target
