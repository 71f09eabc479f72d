"""The wheel: the kernels install as ``a2net.kernels`` (no top-level ``kernels`` package that would
shadow PyPI's ``kernels``), the LICENSE ships, and ``a2net --help`` runs without torch.

The wheel is built from a copy of the checkout (nothing is written into the tree) and installed
with ``--no-deps`` into a virtual environment that sees no site packages, next to PyPI's
``kernels`` package. That download needs the package index (the ``network`` mark): without it the
test fails, saying so; CI has the index, and a machine without network (``perf/gpu_check.sh``)
deselects it by name with ``-m "not network"``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In the fresh environment: both packages resolve, to different files; importing a2net.kernels
# (and a2net, whose attributes are lazy) loads no torch; a2net --help needs no torch either.
CHECK = """
import importlib.util, json, sys
import a2net.kernels
ours = a2net.kernels.__file__
theirs = importlib.util.find_spec("kernels").origin
print(json.dumps({"ours": ours, "theirs": theirs, "torch": "torch" in sys.modules}))
"""


def _copy_sources(destination: Path) -> None:
    """The files a wheel is built from; ``a2net/kernels`` stays the committed symlink."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, destination / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "a2net", destination / "a2net", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "kernels", destination / "kernels", ignore=ignore)


def _run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


def test_license_file_and_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the a2net authors" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    assert (ROOT / "a2net" / "kernels").is_symlink() and (ROOT / "a2net" / "kernels").resolve() == ROOT / "kernels"


@pytest.mark.slow
@pytest.mark.network
def test_wheel_installs_kernels_under_a2net_next_to_pypi_kernels(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    _copy_sources(source)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)])
    (wheel,) = dist.glob("a2net-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "a2net/kernels/__init__.py" in names and "a2net/kernels/attention_pool.py" in names
    assert "a2net/kernels/tuned_configs.json" in names or not (ROOT / "kernels" / "tuned_configs.json").exists()
    assert not [n for n in names if n.startswith("kernels/")], "a top-level kernels package in the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    downloads = tmp_path / "downloads"
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(downloads), "kernels"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if fetched.returncode != 0:
        pytest.fail(f"could not download PyPI's 'kernels' package (is the package index reachable?):\n{fetched.stderr}")
    (theirs,) = downloads.glob("kernels-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])  # no --system-site-packages: sees nothing
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel), str(theirs)])
    result = _run([str(python), "-I", "-c", CHECK], cwd=tmp_path)
    found = json.loads(result.stdout)
    site = venv.resolve()
    assert Path(found["ours"]).resolve().is_relative_to(site), found
    assert Path(found["ours"]).resolve().parent.name == "kernels"
    assert Path(found["ours"]).resolve().parent.parent.name == "a2net"
    assert Path(found["theirs"]).resolve().is_relative_to(site), found
    assert Path(found["ours"]).resolve() != Path(found["theirs"]).resolve()
    assert not found["torch"], "importing a2net.kernels imported torch"

    # the command line's help is answered without torch (not installed here)
    result = _run([str(python), "-I", "-m", "a2net", "--help"], cwd=tmp_path)
    assert "convert-official" in result.stdout
    result = _run([str(python), "-I", "-m", "a2net", "align", "--help"], cwd=tmp_path)
    assert "--warped-out" in result.stdout
