"""detectron2 and balanced_det import in either order, in fresh interpreters of this
environment; the detectron2 that ``make setup`` installs (v0.6 with balanced_det.compat's
source fixes) or a source build works by itself, and the source fixes do what they say."""
import os
import subprocess
import sys

import pytest

from balanced_det import compat

from conftest import ROOT

# Uses what v0.6 broke on today's libraries: Image.LINEAR (a default argument of
# detectron2.data.transforms, at import), np.int (the dataset histogram), the C++ extension.
USE_DETECTRON2 = """
from detectron2.data.build import print_instances_class_histogram
from detectron2.data.transforms import ExtentTransform
import detectron2.engine, detectron2.evaluation, detectron2.layers, detectron2.modeling
ExtentTransform((0, 0, 4, 4), (2, 2))
print_instances_class_histogram([{"annotations": [{"category_id": 0}]}], ["a"])
"""
USE_BALANCED_DET = f"""
import balanced_det
from balanced_det import compat
assert balanced_det.__file__.startswith({os.path.join(ROOT, "projects")!r}), balanced_det.__file__
from detectron2.data import DatasetCatalog
assert "trees_train" in DatasetCatalog.list()
if not compat.HAS_CPP_OPS:
    from detectron2 import _C
    try:
        _C.box_iou_rotated
        raise AssertionError("expected MissingCppOpError")
    except compat.MissingCppOpError as e:
        assert "'box_iou_rotated' used by detectron2.layers.rotated_boxes" in str(e), e
print("OK")
"""
ORDERS = {
    "detectron2 first": USE_DETECTRON2 + USE_BALANCED_DET,
    "balanced_det first": "import balanced_det\n" + USE_DETECTRON2 + USE_BALANCED_DET,
    "detectron2 alone": USE_DETECTRON2 + 'import sys\nassert "balanced_det" not in sys.modules\n'
                        'print("OK")\n',
}


def _run(code):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "projects"),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("order", list(ORDERS))
def test_import_order(order):
    proc = _run(ORDERS[order])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), (
        f"{order}: {proc.stderr[-3000:]}\n(a detectron2 v0.6 without the source fixes needs "
        "`make setup`, which reinstalls it with them)")


V06_LIKE = {
    "data/transforms/transform.py": "def f(interp=Image.LINEAR):\n    return np.float(1)\n",
    "model_zoo/model_zoo.py": (
        "import os\nimport pkg_resources\n\n\ndef get_config_file(config_path):\n"
        "    cfg_file = pkg_resources.resource_filename(\n"
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )\n'
        "    return cfg_file\n"),
    "modeling/anchor_generator.py": "a, b = torch.meshgrid(shifts_y, shifts_x)\n",
    "structures/masks.py": "x = a.astype(np.bool)  # np.bool_, np.int64, np.integer stay\n"
                           "y = np.zeros(3, dtype=np.int)\nz = np.str(1)\n",
    "layers/other.py": "keep = np.bool_(np.int64(1))\n",
}


def _write(root, files):
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)


def _read(root, rel):
    with open(os.path.join(root, rel)) as f:
        return f.read()


def test_fix_v06_sources(tmp_path):
    root = str(tmp_path / "detectron2")
    _write(root, V06_LIKE)
    assert not compat.v06_sources_fixed(root)
    changed = compat.fix_v06_sources(root)
    assert changed == ["_C.py", "data/transforms/transform.py", "model_zoo/model_zoo.py",
                       "modeling/anchor_generator.py", "structures/masks.py"]
    assert _read(root, "modeling/anchor_generator.py") == (
        'a, b = torch.meshgrid(shifts_y, shifts_x, indexing="ij")\n')
    assert _read(root, "data/transforms/transform.py") == (
        "def f(interp=Image.BILINEAR):\n    return float(1)\n")
    zoo = _read(root, "model_zoo/model_zoo.py")
    assert "pkg_resources" not in zoo
    assert 'os.path.join(os.path.dirname(__file__), "configs", config_path)' in zoo
    assert _read(root, "structures/masks.py") == (
        "x = a.astype(bool)  # np.bool_, np.int64, np.integer stay\n"
        "y = np.zeros(3, dtype=int)\nz = str(1)\n")
    assert _read(root, "layers/other.py") == V06_LIKE["layers/other.py"]
    assert compat.v06_sources_fixed(root)
    # The stand-in extension: importable, info functions for collect_env, ops fail clearly.
    namespace = {}
    exec(_read(root, "_C.py"), namespace)
    assert namespace["__cpp_stand_in__"] and namespace["has_cuda"]() is False
    with pytest.raises(compat.MissingCppOpError, match="'nms_rotated' used by"):
        namespace["__getattr__"]("nms_rotated")


def test_fix_v06_sources_refuses_other_sources(tmp_path):
    root = str(tmp_path / "detectron2")
    _write(root, {**V06_LIKE, "data/transforms/transform.py": "interp=Image.BILINEAR\n"})
    with pytest.raises(ValueError, match=r"transform.py does not contain 'interp=Image.LINEAR'"):
        compat.fix_v06_sources(root)


def test_setup_keeps_a_source_build_and_fixed_v06_and_reinstalls_others(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "setup_env", os.path.join(ROOT, "tools", "setup_env.py"))
    setup_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_env)

    built, fixed, plain = (tmp_path / n / "detectron2" for n in ("built", "fixed", "plain"))
    for d in (built, fixed, plain):
        _write(str(d), V06_LIKE)
    (built / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    compat.fix_v06_sources(str(fixed))
    assert setup_env.keep_detectron2(None)[0] is False
    assert setup_env.keep_detectron2(built) == (
        True, f"the detectron2 built with its C++ extension at {built}")
    assert setup_env.keep_detectron2(fixed)[0] is True
    keep, why = setup_env.keep_detectron2(plain)
    assert not keep and f"in place of the one at {plain}" in why
    # Fixes of an older balanced_det (another digest) are out of date.
    (fixed / "_C.py").write_text(_read(str(fixed), "_C.py").replace(
        compat.source_fixes_digest(), "0" * 16))
    assert setup_env.keep_detectron2(fixed)[0] is False
