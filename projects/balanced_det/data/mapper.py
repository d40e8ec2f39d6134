"""detectron2's DatasetMapper with a clear error (or a documented skip) for unreadable images."""
from __future__ import annotations

import logging

from detectron2.data import DatasetMapper as _D2DatasetMapper

from .validation import DatasetError

__all__ = ["DatasetMapper"]

logger = logging.getLogger(__name__)


class DatasetMapper(_D2DatasetMapper):
    """Same arguments as detectron2's ``DatasetMapper`` plus ``on_bad_image``:

    * ``"raise"`` (default): an image that cannot be read or decoded raises
      :class:`DatasetError` naming the file and the reason;
    * ``"skip"``: the image is logged and skipped; detectron2's ``MapDataset`` then draws
      another image in its place (training only; evaluation always raises).
    """

    def __init__(self, *args, on_bad_image: str = "raise", **kwargs):
        super().__init__(*args, **kwargs)
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image={on_bad_image!r}: expected 'raise' or 'skip'")
        self.on_bad_image = on_bad_image

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # PIL: UnidentifiedImageError is an OSError
            msg = (f"cannot read image {dataset_dict.get('file_name')!r} "
                   f"(image_id={dataset_dict.get('image_id')}): {e.__class__.__name__}: {e}. "
                   "Expected a readable image file (JPEG/PNG/...).")
            if self.on_bad_image == "skip" and self.is_train:
                logger.warning(msg + " Skipped (on_bad_image='skip').")
                return None
            raise DatasetError(msg) from e
