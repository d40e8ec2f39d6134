"""`pip install -e .` and `pip install .` into an environment that already has torch and
detectron2 install balanced_det alone: nothing is downloaded, torch and detectron2 stay.

The throwaway environment is a venv that sees this environment's packages (site.addsitedir
in a .pth file), so torch is not installed twice. pip runs with:

* ``--no-index`` (and no pip configuration): nothing can be downloaded, so the install only
  succeeds if every requirement in setup.cfg is already satisfied by the environment -- a
  requirement that would pull or change torch/detectron2 (or anything) fails the test;
* ``--no-build-isolation``: the build uses the environment's setuptools instead of
  downloading one into an isolated build environment (offline and fast).
Dependencies are resolved (no ``--no-deps``): that is what is under test.
"""
import os
import shutil
import site
import subprocess
import sys

import pytest

from conftest import ROOT

PROBE = ("import balanced_det, detectron2, torch; "
         "print(balanced_det.__file__); print(detectron2.__file__); print(torch.__file__)")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A venv layered on this environment, and a copy of the project to install (builds
    write build/ and *.egg-info next to the sources; the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("pip_install")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "projects"), src / "projects",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    child_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                 "['purelib'])"], check=True, capture_output=True,
                                text=True).stdout.strip()
    parents = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE
                                        else [])
    with open(os.path.join(child_site, "zz_parent_environment.pth"), "w") as f:
        f.writelines(f"import site; site.addsitedir({p!r})\n" for p in parents
                     if os.path.isdir(p))
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    environ.update(PIP_CONFIG_FILE=os.devnull, OMP_NUM_THREADS="1")
    return {"python": str(python), "src": str(src), "site": child_site, "environ": environ}


def _run(env, *args):
    proc = subprocess.run([env["python"], *args], cwd=env["site"], env=env["environ"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _pip_install(env, *target):
    _run(env, "-m", "pip", "install", "--no-index", "--no-build-isolation",
         "--disable-pip-version-check", "--quiet", *target)


def _check_installed(env, expected_root):
    import detectron2
    import torch

    bd, d2, th = _run(env, "-c", PROBE).split()
    assert bd.startswith(expected_root), bd
    assert d2 == detectron2.__file__ and th == torch.__file__
    added = sorted(p for p in os.listdir(env["site"]) if p != "zz_parent_environment.pth")
    assert all("balanced_det" in p for p in added), f"pip installed more than balanced_det: {added}"


@pytest.mark.parametrize("editable", [True, False], ids=["pip install -e .", "pip install ."])
def test_pip_install_into_an_environment_with_torch_and_detectron2(env, editable):
    if editable:
        _pip_install(env, "-e", env["src"])
        _check_installed(env, os.path.join(env["src"], "projects", "balanced_det"))
    else:
        _pip_install(env, env["src"])
        _check_installed(env, os.path.join(env["site"], "balanced_det"))
