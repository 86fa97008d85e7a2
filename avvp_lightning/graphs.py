"""A training step's forward and backward replayed as one CUDA graph.

The parser is small: at batch 64 a GPU finishes each of its roughly thousand kernels in a few
microseconds, so a training step is bound by Python and kernel launches, not by the GPU. A CUDA
graph records the step's kernels once and replays them with one launch
(https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs). :class:`GraphedBackward` graphs
the loss and its backward; the optimizer step stays outside (fused Adam is a few launches), so
the learning-rate schedule, gradient clipping and the step count stay the trainer's.

The recipe, as PyTorch documents it: a few eager warm-up steps on a side stream; capture with
the gradients unset, so that the backward allocates them in the graph's memory pool; each later
step copies its batch into the captured input tensors and replays, which *writes* the gradients
(no zeroing needed, nothing accumulates). Random draws (dropout) advance with every replay.
Steps whose inputs have other shapes (an epoch's last, smaller batch) run eagerly, with the
captured gradient tensors zeroed in place first, so that both kinds of step leave the same
gradients in the same tensors.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

Losses = dict[str, Tensor]


class GraphedBackward:
    """Runs ``losses = fn(inputs)`` and ``losses["total"].backward()``, from a CUDA graph when it can.

    After each call every parameter's ``.grad`` holds the gradient of this call's total loss
    alone, as after ``zero_grad()`` and ``backward()``. A replay writes the tensors captured as
    gradients and puts them back as ``.grad`` where something set them to None between calls.
    Parameters whose storage or ``requires_grad`` changed since the capture (moved, replaced,
    frozen, unfrozen) drop the graph; the next call of the captured shape captures again.

    On the CPU (or with inputs on several devices) every call runs eagerly. On a CUDA device
    the first ``warmup`` calls run eagerly on a side stream; the next call whose input shapes
    equal the previous call's captures the graph (then replays it, so that call trains too).

    Requirements on ``fn``: no host synchronization and no data-dependent control flow (a
    captured step cannot read GPU values on the host), only the given inputs vary between calls
    (scalars that change, like the gradient reversal strength, come in as 0-dim tensors), and
    under autocast its casts are not cached (the capture turns the cache off).

    If the capture fails (an operation that cannot be recorded), a warning names the error and
    every later call runs eagerly. The capture records this thread's work only
    (``capture_error_mode="thread_local"``): a DataLoader's pin-memory thread may go on working.

    Args:
        fn: Maps a dict of input tensors to a dict of 0-dim loss tensors with a ``"total"``.
        params: The parameters whose gradients the backward fills, frozen ones included (so
            that unfreezing one is seen).
        warmup: Eager calls before the capture.

    Attributes:
        replays: Calls served by the graph so far.
        eager_calls: Calls run eagerly so far.
        failed: The capture's error, if it failed.
    """

    def __init__(self, fn: Callable[[dict[str, Tensor]], Losses], params: Sequence[Tensor], warmup: int = 3) -> None:
        self.fn, self.params, self.warmup = fn, list(params), warmup
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_inputs: dict[str, Tensor] = {}
        self.static_losses: Losses = {}
        self.grads: list[Optional[Tensor]] = []
        self.layout: list[tuple[int, bool]] = []  # the parameters' (data_ptr, requires_grad) at capture
        self.key: Optional[tuple] = None
        self.last_key: Optional[tuple] = None
        self.replays = self.eager_calls = 0
        self.failed: Optional[BaseException] = None
        self._stream: Optional[torch.cuda.Stream] = None

    @staticmethod
    def _key(inputs: dict[str, Tensor]) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in inputs.items())

    def __call__(self, inputs: dict[str, Tensor]) -> Losses:
        """One step's losses (the graph's own tensors after a replay: copy what you keep)."""
        key = self._key(inputs)
        if self.graph is not None and self._layout() != self.layout:  # parameters moved or (un)frozen
            self.graph, self.grads, self.static_inputs, self.static_losses = None, [], {}, {}
            self.last_key = None
            for p in self.params:  # fresh gradients (None for frozen ones), not the old graph's tensors
                p.grad = None
        if self.graph is not None and key == self.key:
            return self._replay(inputs)
        devices = {v.device for v in inputs.values()}
        capturable = len(devices) == 1 and next(iter(devices)).type == "cuda"
        if (capturable and self.graph is None and self.failed is None and self.eager_calls >= self.warmup
                and key == self.last_key):
            stream = torch.cuda.current_stream()
            try:
                return self._capture(inputs, key)
            except RuntimeError as error:  # e.g. "operation not permitted when stream is capturing"
                torch.cuda.set_stream(stream)  # a failed capture_end() leaves the capture stream current
                self.failed, self.graph = error, None
                warnings.warn(f"CUDA graph capture failed, training steps run eagerly: {error}", stacklevel=2)
        self.last_key = key
        return self._eager(inputs, side_stream=capturable)

    def _layout(self) -> list[tuple[int, bool]]:
        return [(p.data_ptr(), p.requires_grad) for p in self.params]

    # ------------------------------------------------------------------------------- the paths
    def _zero_grads(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)  # in place: captured gradient tensors stay the gradients

    def _eager(self, inputs: dict[str, Tensor], side_stream: bool) -> Losses:
        self._zero_grads()
        with self._side_stream() if side_stream else contextlib.nullcontext():
            losses = self.fn(inputs)
            losses["total"].backward()
        self.eager_calls += 1
        return {k: v.detach() for k, v in losses.items()}  # nothing keeps this step's autograd graph

    def _capture(self, inputs: dict[str, Tensor], key: tuple) -> Losses:
        self.static_inputs = {k: v.clone() for k, v in inputs.items()}
        for p in self.params:
            p.grad = None  # the captured backward allocates them in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with _uncached_autocast(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            losses = self.fn(self.static_inputs)
            losses["total"].backward()
        # Detached, the same memory that each replay writes. Kept with their autograd graph, the
        # losses would keep the capture's AccumulateGrad nodes, tied to the capture stream, for
        # the eager steps' backward (autograd warns of the stream mismatch and synchronizes).
        self.static_losses = {k: v.detach() for k, v in losses.items()}
        self.graph, self.key = graph, key
        self.grads, self.layout = [p.grad for p in self.params], self._layout()
        graph.replay()  # the capture ran nothing: this call's step
        self.replays += 1
        return self.static_losses

    def _replay(self, inputs: dict[str, Tensor]) -> Losses:
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:
                p.grad = g
        for k, v in inputs.items():
            self.static_inputs[k].copy_(v, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.static_losses

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Run on a side stream, ordered after and before the current one (PyTorch's warm-up recipe)."""
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            yield
        current.wait_stream(self._stream)


def _uncached_autocast() -> contextlib.AbstractContextManager:
    """The enclosing CUDA autocast with its cast cache off (graphs must not capture cached casts)."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
