"""balanced_det: balanced learning for object detection, as a detectron2 project.

Importing the package applies :mod:`balanced_det.compat` (the shims that let detectron2 v0.6
run on today's libraries) and registers datasets, backbones and heads in detectron2's
registries.
"""
from . import compat

compat.apply()

from . import data  # noqa: E402  (registers datasets)
from . import modeling  # noqa: E402  (registers backbones and heads)

__version__ = "0.1.0"
