"""Recital installed from its wheel into a fresh venv outside the repository: the shipped models come with it.

The wheel is built from a copy of the sources (a build inside the repository would leave build/ behind, whose
stale files a later build would pack). The fresh venv gets only the wheel; the big dependencies (torch, Qt) are
read from this project's venv through a path line in a .pth file. Python processes .pth files only in site
directories, so the project's editable install, itself a .pth there, does not leak into the fresh venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "core", "trainer", "studio", "assets")
CODE = ("core", "trainer", "studio")
SHIPPED = ("default", "default-perceivers", "default-smdim")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows its output."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """recital-*.whl built offline with this venv's setuptools (no build isolation)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(dist), str(source)])
    (built,) = dist.glob("recital-*.whl")
    return built


def test_wheel_holds_the_code_the_shipped_models_and_the_primer(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {path.relative_to(REPO).as_posix() for top in CODE for path in (REPO / top).rglob("*.py")
            if "__pycache__" not in path.parts}
    missing = sorted(code - names)
    assert not missing, f"not in the wheel (add the package to [tool.setuptools] packages): {missing}"
    for model in SHIPPED:
        for file in ("config.json", "model.safetensors", "card.md"):
            assert f"recital_assets/models/{model}/{file}" in names
    assert "recital_assets/primers/primer.mid" in names
    assert "trainer/recipes/default_models.toml" in names


def test_installed_wheel_generates_with_its_own_shipped_model(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", str(wheel)])
    # Only now the dependencies: pip must not see (nor touch) the project's editable install while installing.
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "recital-test-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))

    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"RECITAL_DATA_DIR": str(tmp_path / "data"), "RECITAL_CACHE_DIR": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1"}
    recital = str(venv / "bin" / "recital")

    run([recital, "generate", "--seconds", "2", "--seed", "0", "--out", "x.mid"], cwd=work, env=env)
    assert (work / "x.mid").stat().st_size > 0

    listing = run([recital, "models", "--paths"], cwd=work, env=env).stdout
    installed = (site / "recital_assets" / "models").resolve()
    for model in SHIPPED:
        assert f"{installed / model}" in listing, listing
    assert str(REPO) not in listing, listing

    where = run([str(python), "-c", "import core, core.modeldir as m; from importlib import resources; "
                 "print(core.__file__); print(m.SHIPPED_DIR); "
                 "print(resources.files('recital_assets') / 'primers' / 'primer.mid')"], cwd=work, env=env)
    core_file, shipped_dir, primer = (Path(line) for line in where.stdout.split())
    assert core_file.resolve().is_relative_to(venv.resolve())
    assert shipped_dir.resolve() == installed
    assert primer.resolve().is_relative_to(venv.resolve()) and primer.is_file()
