"""A training sampler whose stream can be resumed at any position.

detectron2's ``TrainingSampler`` yields an infinite stream of shuffled indices from one seed;
after ``--resume`` the stream starts again from its beginning, so a resumed run sees other
images at a given iteration than an uninterrupted one. :class:`ResumableTrainingSampler`
draws epoch ``e``'s permutation from ``(seed, e)`` alone, so the stream is a pure function of
the position and ``start`` skips to any position in O(1) per epoch.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Optional

import torch
from torch.utils.data.sampler import Sampler

from detectron2.utils import comm

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(Sampler):
    """Infinite shuffled stream of dataset indices, sharded over processes, restartable.

    Global position ``k`` (counted over all processes: ``k = iteration * total_batch_size +
    rank-interleaved offset``) holds index ``perm_{k // size}[k % size]``, where
    ``perm_e = randperm(size, seed + e)``. Process ``r`` of ``w`` takes positions
    ``r, r + w, r + 2w, ...`` starting at ``start``.

    Args:
        size: dataset length.
        shuffle: shuffle each epoch (else the identity order).
        seed: stream seed; must be the same on all processes (default: a shared random seed).
        start: global position to start from (``start_iter * total_batch_size`` on resume).
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None, start: int = 0):
        if size <= 0:
            raise ValueError(f"ResumableTrainingSampler(size={size}): the dataset is empty")
        self._size = int(size)
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._start = int(start)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def _epoch(self, e: int) -> torch.Tensor:
        if not self._shuffle:
            return torch.arange(self._size)
        g = torch.Generator()
        g.manual_seed(self._seed + e)
        return torch.randperm(self._size, generator=g)

    def __iter__(self) -> Iterator[int]:
        pos = self._start + self._rank
        epoch, perm = -1, None
        for pos in itertools.count(pos, self._world_size):
            e, i = divmod(pos, self._size)
            if e != epoch:
                epoch, perm = e, self._epoch(e)
            yield int(perm[i])
