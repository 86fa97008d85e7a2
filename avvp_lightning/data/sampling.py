"""Training-order shuffling that a resumed run reproduces exactly.

A ``DataLoader(shuffle=True)`` draws each epoch's order from torch's global RNG, whose state at
the start of epoch ``k`` depends on everything drawn before (weight init, dropout, other
loaders). A run resumed from a checkpoint starts from a different global state and so sees a
different order. :class:`EpochShuffleSampler` makes the order a pure function of
``(seed, epoch)``: Lightning calls :meth:`EpochShuffleSampler.set_epoch` before every epoch,
so epoch ``k`` has the same order in an uninterrupted run and in one resumed at epoch ``k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import RandomSampler


def mix_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (e.g. ``seed, epoch``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochShuffleSampler(RandomSampler):
    """A random permutation of the dataset per epoch, determined by ``(seed, epoch)`` only.

    Lightning calls :meth:`set_epoch` before each training epoch (as for a
    ``DistributedSampler``). Used without Lightning, each pass over the sampler moves on to the
    next epoch by itself, so plain loops still get a fresh order every epoch. It is a
    ``RandomSampler``, so Lightning knows the loader shuffles: under DDP it swaps in a
    ``DistributedSampler``, which shuffles by ``(seed, epoch)`` as well.

    Args:
        data_source: The dataset (sized).
        seed: Base seed; the run's seed (``torch.initial_seed()`` after ``seed_everything``).
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.num_items = len(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next pass."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        yield from torch.randperm(self.num_items, generator=generator).tolist()


def loader_generator(seed: int) -> torch.Generator:
    """A private generator for a ``DataLoader``'s own draws (the worker base seed).

    Without it, creating each epoch's iterator takes one number from torch's global RNG, at a
    point that differs between an uninterrupted and a resumed run, shifting every later
    dropout mask.
    """
    return torch.Generator().manual_seed(mix_seed(seed, 1 << 20))
