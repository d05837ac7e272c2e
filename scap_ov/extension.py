"""Locate the compiled CPU extension and register it with an ``ov.Core``.

The extension's ABI is tied to the exact OpenVINO release it was built against, so loading refuses a
``.so`` built for another release with a message naming both versions instead of a cryptic dlopen error.
"""
from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from pathlib import Path

import openvino as ov

from scap_ov.errors import ScapError

LIBRARY_NAME = "libscap_ov_cpu_extension.so"
ENV_OVERRIDE = "SCAP_OV_EXTENSION_PATH"


class ExtensionError(ScapError):
    """The extension is missing, or was built for another OpenVINO release."""


def _candidate_dirs() -> list[Path]:
    # A regular install keeps lib/ beside this file; an editable (redirect) install keeps the compiled
    # part in site-packages while the Python files stay in the checkout, so also look along sys.path.
    dirs = [Path(__file__).resolve().parent / "lib"]
    dirs += [Path(p) / "scap_ov" / "lib" for p in sys.path if p]
    return dirs


@lru_cache(maxsize=None)
def extension_path() -> str:
    """Absolute path of the SCAP CPU extension library (``$SCAP_OV_EXTENSION_PATH`` overrides)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        if not Path(override).is_file():
            raise ExtensionError(f"{ENV_OVERRIDE}={override} does not exist")
        return str(Path(override).resolve())
    for d in _candidate_dirs():
        if (d / LIBRARY_NAME).is_file():
            return str((d / LIBRARY_NAME).resolve())
    raise ExtensionError(
        f"{LIBRARY_NAME} not found (looked in {', '.join(str(d) for d in _candidate_dirs()[:3])} ...); "
        "rebuild the package with the README set-up command"
    )


def built_for_openvino(path: str | None = None) -> str:
    """The OpenVINO release the extension at ``path`` was compiled against (from its build_info.json)."""
    info = Path(path or extension_path()).parent / "build_info.json"
    try:
        return json.loads(info.read_text())["openvino_version"]
    except (OSError, ValueError, KeyError) as exc:
        raise ExtensionError(f"cannot read the extension's build record {info}: {exc}") from exc


def _release(version: str) -> str:
    """MAJOR.MINOR.PATCH of an OpenVINO version string such as '2026.4.1-22982-e213a14...'."""
    return ".".join(version.split("-")[0].split(".")[:3])


def check_compatible(path: str | None = None) -> None:
    built = _release(built_for_openvino(path))
    running = _release(ov.get_version())
    if built != running:
        raise ExtensionError(
            f"the SCAP extension was built for OpenVINO {built} but this process runs OpenVINO {running}; "
            "rebuild it against the running release (rerun the README set-up command)"
        )


def register(core: ov.Core, path: str | None = None) -> ov.Core:
    """Add the SCAP CPU extension to ``core`` (idempotent per core) and return the core."""
    path = path or extension_path()
    check_compatible(path)
    if getattr(core, "_scap_ov_extension", None) == path:
        return core
    try:
        core.add_extension(path)
    except RuntimeError as exc:
        raise ExtensionError(f"OpenVINO could not load the SCAP extension {path}: {exc}") from exc
    try:
        core._scap_ov_extension = path
    except AttributeError:  # pybind objects may refuse new attributes; registering twice is harmless
        pass
    return core
