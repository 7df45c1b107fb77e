"""The npe2 manifest is valid, its callables import, and it offers what the plugin provides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from npe2 import PluginManifest

NPE2 = Path(sys.executable).with_name("npe2")


def test_npe2_validate_with_imports():
    result = subprocess.run(
        [str(NPE2), "validate", "napari-aeseg", "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_lists_the_contributions():
    pm = PluginManifest.from_distribution("napari-aeseg")
    pm.validate_imports()
    c = pm.contributions
    assert pm.name == "napari-aeseg" and pm.display_name == "napari-aeseg"
    assert all(cmd.id.startswith("napari-aeseg.") for cmd in c.commands)
    assert {"Train denoiser", "Denoise"} <= {w.display_name for w in c.widgets}
    assert {s.key for s in c.sample_data} == {
        "nuclei_2d",
        "nuclei_3d",
        "synthetic_2d",
        "synthetic_3d",
        "retina",
    }
    (reader,) = c.readers
    assert reader.filename_patterns == ["*.aeseg"]
    writers = {w.command: w for w in c.writers}
    assert writers["napari-aeseg.write_labels_tiff"].layer_types == ["labels"]
    assert writers["napari-aeseg.write_labels_tiff"].filename_extensions == [".tif", ".tiff"]
    assert writers["napari-aeseg.write_labels_zarr"].filename_extensions == [".zarr"]


def test_package_manifest_is_the_root_manifest():
    root = Path(__file__).resolve().parents[1]
    packaged = root / "src" / "napari_aeseg" / "napari.yaml"
    assert packaged.is_symlink()
    assert packaged.resolve() == (root / "napari.yaml").resolve()
