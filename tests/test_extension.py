"""Locating and loading the compiled extension, and refusing one built for another OpenVINO release."""
import json
import shutil

import openvino as ov
import pytest

import scap_ov
from scap_ov.extension import ExtensionError, built_for_openvino, check_compatible, extension_path, register


def test_extension_is_built_for_the_running_openvino():
    path = extension_path()
    assert path.endswith("libscap_ov_cpu_extension.so")
    assert built_for_openvino(path).split("-")[0] == ov.get_version().split("-")[0]
    check_compatible(path)


def test_register_adds_the_op_and_is_idempotent():
    core = ov.Core()
    assert register(core) is core
    register(core)  # a second call must not fail


def test_extension_built_for_another_release_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "lib"
    fake.mkdir()
    shutil.copy(extension_path(), fake / "libscap_ov_cpu_extension.so")
    (fake / "build_info.json").write_text(json.dumps({"openvino_version": "2025.1.0"}))
    with pytest.raises(ExtensionError) as err:
        register(ov.Core(), str(fake / "libscap_ov_cpu_extension.so"))
    running = ".".join(ov.get_version().split("-")[0].split(".")[:3])
    assert "built for OpenVINO 2025.1.0" in str(err.value) and f"runs OpenVINO {running}" in str(err.value)


def test_missing_extension_and_missing_build_record(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAP_OV_EXTENSION_PATH", str(tmp_path / "none.so"))
    extension_path.cache_clear()
    try:
        with pytest.raises(ExtensionError, match="does not exist"):
            extension_path()
    finally:
        extension_path.cache_clear()
    lone = tmp_path / "libscap_ov_cpu_extension.so"
    lone.write_bytes(b"")
    with pytest.raises(ExtensionError, match="cannot read the extension's build record"):
        check_compatible(str(lone))
    assert scap_ov.ScapError in ExtensionError.__mro__
