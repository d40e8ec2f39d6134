"""Every difference between detectron2 releases and today's library stack, in one place.

balanced_det runs on detectron2 v0.6 installed from the package registry (Python sources
only, no C++ extension) and on detectron2 built from source (newer than v0.6, extension
built). Both report ``detectron2.__version__ == "0.6"``, so every fix below is selected by a
feature check, never by a version string, and is a no-op where the feature is already right.

The fixes are applied in one of two ways:

* ``make setup`` (``tools/setup_env.py``) installs the registry's v0.6 sources with
  :func:`fix_v06_sources` applied: :data:`V06_SOURCE_FIXES`, the numpy aliases
  (:data:`NUMPY_ALIASES`) and a stand-in ``detectron2/_C.py`` (:data:`CPP_STAND_IN_SOURCE`).
  That detectron2 works by itself and in any import order.
* :func:`apply` runs once, when ``balanced_det`` is imported: the runtime shims of the first
  three rows (for a v0.6 installed another way, where ``balanced_det`` must then be imported
  before detectron2's modules), and the behaviour of the rows below.

===========================================  =====================================================
What breaks                                   What this module (or the named class) does
===========================================  =====================================================
Pillow >= 10 removed ``Image.LINEAR``, used   source fix ``Image.BILINEAR``; runtime shim:
as a default argument in v0.6's               alias ``Image.LINEAR = Image.BILINEAR``
``detectron2.data.transforms`` (import time)
numpy >= 1.24 removed ``np.bool/int/float/    source fix: the builtins they always meant; runtime
str``, used by v0.6 (dataset histogram,       shim: alias the missing names to them (numpy 2
polygon masks, evaluators)                    brought ``np.bool`` back)
no ``detectron2._C`` (registry install)       a stand-in module whose ops raise
imported by ``layers/deform_conv.py``,        :class:`MissingCppOpError` naming the op; info
``layers/rotated_boxes.py``,                  functions used by ``collect_env`` say "not built";
``layers/roi_align_rotated.py``,              :func:`coco_evaluator_kwargs` selects pycocotools'
``evaluation/fast_eval_api.py``               COCOeval (``use_fast_impl=False``)
setuptools >= 82 removed ``pkg_resources``    source fix: the config path without it; otherwise
(``detectron2.model_zoo`` imports it)         requirements pin setuptools 81;
                                              :func:`model_zoo_config_file` needs neither
torch >= 1.12: ``get_norm("GN", 1)`` fails    balanced_det's dense heads build their norms with
in v0.6 ``RetinaNetHead(norm="GN")``          :func:`group_norm` and the real channel count
v0.6 FCOS: crash on images without boxes;     ``balanced_det.modeling.FCOS`` (own matcher and
``_decode_multi_level_predictions`` ignores   decoding, loop-free and empty-safe)
its threshold/top-k arguments
torch >= 2.6: ``torch.load`` defaults to      :func:`torch_load` passes ``weights_only``
``weights_only=True`` (fvcore's checkpointer  explicitly and explains a refusal
and detectron2's ``.pyth`` loader)
v0.6 ``AMPTrainer`` is CUDA-only, fp16 only   ``balanced_det.engine.Trainer`` (CUDA fp16/bf16,
                                              CPU bf16, ``torch.amp.GradScaler``)
``Backbone.padding_constraints`` exists only  :func:`padding_constraints` reads it if present
in newer detectron2
detectron2 and pycocotools warn about their   :data:`KNOWN_WARNINGS` are ignored (from import on,
own code on today's libraries (torch.jit,     and inside :func:`known_warnings_ignored` where
``torch.meshgrid``, numpy 2 ``__array__``,    balanced_det trains or evaluates); meshgrid: also a
read-only image arrays, ``Logger.warn``, an   source fix
unclosed file)
``HookBase.after_backward`` and the           ``balanced_det.engine.Trainer`` calls the hook and
``SimpleTrainer`` options                     takes the options where :func:`has_after_backward`
``gather_metric_period``,                     and :func:`simple_trainer_options` find them
``zero_grad_before_forward``,
``async_write_metrics`` exist only in newer
detectron2
===========================================  =====================================================

Module-level imports are the standard library only: ``tools/setup_env.py`` loads this file
(to apply the source fixes) outside the environment it sets up.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import logging
import os
import pickle
import re
import sys
import types
import warnings
from typing import Any, Dict, List, Optional

__all__ = [
    "apply",
    "HAS_CPP_OPS",
    "MissingCppOpError",
    "missing_cpp_op",
    "coco_evaluator_kwargs",
    "describe",
    "fix_v06_sources",
    "source_fixes_digest",
    "v06_sources_fixed",
    "group_norm",
    "has_after_backward",
    "known_warnings_ignored",
    "KNOWN_WARNINGS",
    "model_zoo_config_file",
    "padding_constraints",
    "simple_trainer_options",
    "torch_load",
    "UntrustedCheckpointError",
    "create_local_process_group",
]

logger = logging.getLogger(__name__)

# Filled by apply(): whether detectron2's compiled extension is importable.
HAS_CPP_OPS: bool = False
_APPLIED: Dict[str, bool] = {}

#: detectron2 v0.6 source lines that fail on today's libraries, as ``(file in the detectron2
#: package, old text, new text)``.
V06_SOURCE_FIXES = (
    # Pillow >= 10 removed Image.LINEAR (a default argument: evaluated at import).
    ("data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR"),
    # torch warns about torch.meshgrid without `indexing` ("ij" is what it computes).
    ("modeling/anchor_generator.py", "torch.meshgrid(shifts_y, shifts_x)",
     'torch.meshgrid(shifts_y, shifts_x, indexing="ij")'),
    # setuptools >= 82 removed pkg_resources (older ones warn when it is imported).
    ("model_zoo/model_zoo.py", "import pkg_resources\n", ""),
    ("model_zoo/model_zoo.py",
     'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", '
     'config_path)\n    )',
     'os.path.join(os.path.dirname(__file__), "configs", config_path)'),
)

#: numpy >= 1.24 removed ``np.bool/int/float/str``; v0.6 uses them in many files.
NUMPY_ALIASES = re.compile(r"\bnp\.(bool|int|float|str)\b")

#: ``detectron2/_C.py`` of an installation without the C++ extension.
CPP_STAND_IN_SOURCE = '''\
"""Stand-in for detectron2's C++ extension, which this installation does not have (the
registry's detectron2 v0.6 sources do not include its C++ sources). Modules that import it
import; using one of its ops raises balanced_det.compat.MissingCppOpError naming the op."""
__cpp_stand_in__ = True


def get_compiler_version():  # used by detectron2.utils.collect_env
    return "not built (detectron2 installed without its C++ extension)"


def get_cuda_version():
    return "not built"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        from balanced_det.compat import missing_cpp_op
    except ImportError:  # balanced_det was removed from this environment
        raise RuntimeError(f"detectron2 was installed without its C++ extension "
                           f"(detectron2._C): the op {name!r} is unavailable") from None
    raise missing_cpp_op(name)
'''

_CPP_OPS_USED_BY = {
    "deform_conv": "detectron2.layers.DeformConv / ModulatedDeformConv",
    "modulated_deform_conv": "detectron2.layers.ModulatedDeformConv",
    "box_iou_rotated": "detectron2.layers.rotated_boxes (rotated box IoU)",
    "nms_rotated": "detectron2.layers.nms_rotated",
    "roi_align_rotated": "detectron2.layers.ROIAlignRotated",
    "COCOeval": "fast COCO evaluation (COCOEvaluator(use_fast_impl=True))",
    "InstanceAnnotation": "fast COCO evaluation (COCOEvaluator(use_fast_impl=True))",
}


class MissingCppOpError(RuntimeError):
    """Raised when code calls an op of detectron2's C++ extension and it is not built."""


def missing_cpp_op(name: str) -> MissingCppOpError:
    """The error for using op ``name`` of the C++ extension where it is not built."""
    used_by = next((v for k, v in _CPP_OPS_USED_BY.items() if name.startswith(k)), None)
    hint = (
        "pass use_fast_impl=False to COCOEvaluator (balanced_det's evaluator does this "
        "automatically)"
        if used_by and "COCO" in used_by
        else "use an op that does not need it (e.g. torchvision.ops.deform_conv2d) or "
        "install detectron2 from source: DETECTRON2_SOURCE=/path/to/detectron2 make setup"
    )
    return MissingCppOpError(
        f"detectron2 was installed without its C++ extension (detectron2._C), so the C++ op "
        f"'{name}'{' used by ' + used_by if used_by else ''} is unavailable; {hint}."
    )


def source_fixes_digest() -> str:
    """A digest of the source fixes, recorded in the stand-in ``_C.py`` they install."""
    return hashlib.sha256(repr((V06_SOURCE_FIXES, NUMPY_ALIASES.pattern,
                                CPP_STAND_IN_SOURCE)).encode()).hexdigest()[:16]


def _source_fixes_marker() -> str:
    return f'__source_fixes__ = "{source_fixes_digest()}"\n'


def fix_v06_sources(package_dir: str) -> List[str]:
    """Apply the source fixes to detectron2 v0.6's Python sources in ``package_dir`` (the
    ``detectron2`` folder) and write the stand-in ``_C.py``. Returns the changed files.

    Raises ValueError if a fix's old text is missing (these are not v0.6's sources)."""
    changed = set()
    for rel, old, new in V06_SOURCE_FIXES:
        path = os.path.join(package_dir, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if old not in text:
            raise ValueError(f"{path} does not contain {old!r}: expected detectron2 v0.6's "
                             "sources")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))
        changed.add(rel)
    for dirpath, _, files in os.walk(package_dir):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                text, n = NUMPY_ALIASES.subn(r"\1", f.read())
            if n:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                changed.add(os.path.relpath(path, package_dir))
    with open(os.path.join(package_dir, "_C.py"), "w", encoding="utf-8") as f:
        f.write(CPP_STAND_IN_SOURCE + _source_fixes_marker())
    return sorted(changed | {"_C.py"})


def v06_sources_fixed(package_dir: str) -> bool:
    """Whether the detectron2 in ``package_dir`` was installed with today's
    :func:`fix_v06_sources` (read from its stand-in ``_C.py``, without importing it)."""
    try:
        with open(os.path.join(package_dir, "_C.py"), encoding="utf-8") as f:
            return _source_fixes_marker() in f.read()
    except OSError:
        return False


def _detectron2_dir() -> str:
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "balanced_det needs detectron2, which is not installed in this environment "
            f"({sys.executable}). Run `make setup` or install it (see README, 'Set-up details')."
        )
    return list(spec.submodule_search_locations)[0]


def _shim_pillow():
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        _APPLIED["PIL.Image.LINEAR"] = True


def _shim_numpy_aliases():
    import numpy as np

    for name, value in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy 2 warns when probing the removed names
            present = hasattr(np, name)
        if not present:
            setattr(np, name, value)
            _APPLIED[f"numpy.{name}"] = True


# Warnings about detectron2's and pycocotools' code on today's libraries, not the caller's:
# (message, category, module the warning is attributed to; "" = any).
KNOWN_WARNINGS = (
    # detectron2 decorates helpers with torch.jit.script at import; torch >= 2.10 warns once
    # per decorator (attributed to torch's frame).
    (r"`torch\.jit\.script` is deprecated", FutureWarning, ""),
    # detectron2's anchor generator calls torch.meshgrid without `indexing` (same result as
    # "ij"; fixed in the v0.6 sources that make setup installs).
    (r"torch\.meshgrid: in an upcoming release", UserWarning, ""),
    # numpy 2: np.array() of an object whose __array__ takes no `copy` (a torch tensor in
    # detectron2's COCO mask encoding; pycocotools' masks in its decode).
    (r"__array__ implementation doesn't accept a copy keyword", DeprecationWarning,
     r"(detectron2|pycocotools)(\.|$)"),
    # detectron2 reads images with np.asarray(PIL image) (read-only with today's Pillow), then
    # detectron2/fvcore make tensors of them with torch.from_numpy / as_tensor.
    (r"The given NumPy array is not writable", UserWarning, r"(detectron2|fvcore)(\.|$)"),
    # detectron2 calls logging's deprecated Logger.warn.
    (r"The 'warn' method is deprecated", DeprecationWarning, r"detectron2(\.|$)"),
    # detectron2's default_setup reads the config file without closing it.
    (r"unclosed file", ResourceWarning, r"detectron2(\.|$)"),
)


def _ignore_known_warnings():
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@contextlib.contextmanager
def known_warnings_ignored():
    """Ignore :data:`KNOWN_WARNINGS` inside the block, whatever filters are active (e.g. a
    test runner's ``-W error``); used where balanced_det calls detectron2 (a training step,
    an evaluation)."""
    with warnings.catch_warnings():
        _ignore_known_warnings()
        yield


def _is_stand_in(module: Optional[types.ModuleType]) -> bool:
    return bool(getattr(module, "__cpp_stand_in__", False))


def _shim_cpp_extension():
    global HAS_CPP_OPS
    if _is_stand_in(sys.modules.get("detectron2._C")):
        HAS_CPP_OPS = False
        return
    try:
        spec = importlib.util.find_spec("detectron2._C")
    except ImportError:
        spec = None
    if spec is not None and not (spec.origin or "").endswith(".py"):
        HAS_CPP_OPS = True  # the compiled extension
        return
    HAS_CPP_OPS = False
    if spec is not None:  # the stand-in _C.py of fixed v0.6 sources
        import detectron2._C  # noqa: F401
        return
    import detectron2

    stub = types.ModuleType("detectron2._C")
    exec(compile(CPP_STAND_IN_SOURCE, "<detectron2._C stand-in>", "exec"), stub.__dict__)
    sys.modules["detectron2._C"] = stub
    detectron2._C = stub
    _APPLIED["detectron2._C stand-in"] = True


def apply() -> None:
    """Apply every shim this environment needs. Idempotent; called by ``import balanced_det``."""
    if _APPLIED.get("done"):
        return
    _detectron2_dir()  # a clear error if detectron2 is missing
    _ignore_known_warnings()  # also where balanced_det is not in the call stack
    _shim_pillow()
    _shim_numpy_aliases()
    _shim_cpp_extension()
    _APPLIED["done"] = True


def describe() -> str:
    """One line per shim in effect, for logs and the set-up check."""
    import detectron2
    import torch

    shims = [k for k in _APPLIED if k != "done"] or ["none"]
    where = os.path.dirname(detectron2.__file__)
    return (
        f"detectron2 {detectron2.__version__} at {where}"
        f"{' (v0.6 sources with the source fixes)' if v06_sources_fixed(where) else ''}; "
        f"C++ ops: {'built' if HAS_CPP_OPS else 'not built'}; torch {torch.__version__}; "
        f"shims: {', '.join(shims)}"
    )


def coco_evaluator_kwargs() -> Dict[str, Any]:
    """Keyword arguments that make detectron2's ``COCOEvaluator`` work in this environment."""
    return {"use_fast_impl": HAS_CPP_OPS}


def group_norm(num_channels: int, num_groups: int = 32):
    """``nn.GroupNorm`` with a clear error when channels are not divisible by groups.

    (v0.6's ``RetinaNetHead`` probes ``get_norm("GN", 1)``, which torch >= 1.12 rejects.)
    """
    from torch import nn

    if num_channels % num_groups != 0:
        raise ValueError(
            f"GroupNorm needs num_channels divisible by num_groups; got num_channels="
            f"{num_channels}, num_groups={num_groups}"
        )
    return nn.GroupNorm(num_groups, num_channels)


def padding_constraints(backbone) -> Dict[str, int]:
    """``backbone.padding_constraints`` on detectron2 versions that have it, else ``{}``."""
    return dict(getattr(backbone, "padding_constraints", {}) or {})


def simple_trainer_options() -> Dict[str, Any]:
    """The optional arguments of this detectron2's ``SimpleTrainer.__init__`` and their
    defaults: none in v0.6; ``gather_metric_period``, ``zero_grad_before_forward``,
    ``async_write_metrics`` in newer releases."""
    from detectron2.engine import SimpleTrainer

    params = inspect.signature(SimpleTrainer.__init__).parameters
    return {n: p.default for n, p in params.items()
            if n not in ("self", "model", "data_loader", "optimizer") and p.default is not p.empty}


def has_after_backward() -> bool:
    """Whether this detectron2's trainer hooks have ``after_backward`` (newer than v0.6)."""
    from detectron2.engine import HookBase

    return hasattr(HookBase, "after_backward")


class UntrustedCheckpointError(pickle.UnpicklingError):
    """``torch.load(weights_only=True)`` refused a file that needs arbitrary unpickling."""


def torch_load(f, map_location="cpu", *, trusted: bool = False):
    """``torch.load`` with an explicit ``weights_only`` on every torch version.

    Checkpoints written by balanced_det/detectron2 hold tensors and plain Python values and
    load with ``weights_only=True`` (the safe mode, default from torch 2.6). A file that needs
    arbitrary unpickling raises :class:`UntrustedCheckpointError`, unless the caller marks it
    ``trusted`` or the environment sets ``BALANCED_DET_TRUST_CHECKPOINTS=1``.
    """
    import torch

    trusted = trusted or os.environ.get("BALANCED_DET_TRUST_CHECKPOINTS", "") == "1"
    try:
        return torch.load(f, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower() and "weights_only" not in str(e):
            raise
        name = getattr(f, "name", f)
        raise UntrustedCheckpointError(
            f"{name}: refused to unpickle non-tensor objects with torch.load(weights_only=True) "
            f"({str(e).splitlines()[0]}). If you trust this file, set "
            "BALANCED_DET_TRUST_CHECKPOINTS=1 and load it again."
        ) from e


def create_local_process_group(num_per_machine: int) -> None:
    """Create detectron2's per-machine process group (``comm.get_local_rank``) after
    ``init_process_group``: newer detectron2 has ``comm.create_local_process_group``; v0.6
    expects ``launch()`` to set ``comm._LOCAL_PROCESS_GROUP`` itself."""
    import torch.distributed as dist

    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_per_machine)
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % num_per_machine:
        raise ValueError(f"world size {world} is not a multiple of {num_per_machine} per machine")
    for machine in range(world // num_per_machine):
        ranks = list(range(machine * num_per_machine, (machine + 1) * num_per_machine))
        group = dist.new_group(ranks)  # every process must create every group
        if rank in ranks:
            comm._LOCAL_PROCESS_GROUP = group


def model_zoo_config_file(path: str) -> str:
    """Path of a config inside detectron2's packaged model zoo, without ``pkg_resources``."""
    spec = importlib.util.find_spec("detectron2")
    root = os.path.join(os.path.dirname(spec.origin), "model_zoo", "configs")
    full = os.path.join(root, path)
    if not os.path.exists(full):
        raise FileNotFoundError(f"{path!r} is not in detectron2's model zoo configs ({root})")
    return full
