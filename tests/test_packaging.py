"""The built wheel carries the manifest and the sample data, and napari finds the plugin in it.

The editable install is covered by tests/test_manifest.py; here a wheel is built from the
source tree and installed alone into a fresh virtual environment, which reuses the
dependencies of the test environment through a path entry (their .pth files, among them
the editable install of this package, are not processed there).
"""

from __future__ import annotations

import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_manifest_and_samples_and_validates(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("napari_aeseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_aeseg/napari.yaml" in names
    assert "napari_aeseg/sample_data/real_nuclei_2d.tif" in names
    assert "napari_aeseg/sample_data/real_3d_stack.tif" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: BSD-3-Clause" in zipfile.ZipFile(wheel).read(meta).decode()

    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (target / "_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    check = (
        "import napari_aeseg, pathlib, sys\n"
        f"assert pathlib.Path(napari_aeseg.__file__).is_relative_to({str(target)!r}), napari_aeseg.__file__\n"
        "from napari_aeseg.core.samples import SAMPLES, sample_path\n"
        "assert all(sample_path(k).is_file() for k in SAMPLES)\n"
        "from npe2 import PluginManager\n"
        "pm = PluginManager.instance(); pm.discover()\n"
        "assert 'napari-aeseg' in pm._manifests, list(pm._manifests)\n"
        "from npe2.cli import main\n"
        "sys.argv = ['npe2', 'validate', 'napari-aeseg', '--imports']\n"
        "main()\n"
    )
    proc = subprocess.run([str(py), "-c", check], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout
