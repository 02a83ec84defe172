"""Using the user's model without leaving a trace: eval mode for the duration of a call, one call at a time.

Every pytorch_cam call that runs the user's model (CAMs, guided backprop, the default-layer search)
goes through ``eval_mode``: it holds the model's lock, so calls on one model from several threads
run one after the other and never capture each other's activations or restore each other's
training flags, and it puts every module's own ``training`` flag back afterwards.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

from torch import nn

_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises pytorch_cam's calls on ``model`` across threads."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Hold ``model``'s lock, evaluate it in eval mode, and restore every module's training flag after."""
    with model_lock(model):
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training


class _EagerCall(nn.Module):
    """Runs a module that was compiled in place (``module.compile()``) through its eager forward.

    A compiled call ignores hooks added after compilation; the eager path honours them.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return self.module._call_impl(*args, **kwargs)


def eager_model(model: nn.Module) -> nn.Module:
    """The module to explain for ``model``: the original of a ``torch.compile``d model, else ``model``.

    Compiled code ignores forward hooks registered after compilation, so explaining it directly would
    capture nothing (or, with a fallback, give a wrong map). The original module shares the
    parameters, and running it eagerly gives the compiled model's function.
    """
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module) and type(model).__name__ == "OptimizedModule":
        return original
    if getattr(model, "_compiled_call_impl", None) is not None:
        return _EagerCall(model)
    return model


class PerThreadResults:
    """Mixin for objects that keep their last call's results per thread (``self._last``, a
    ``threading.local``): one object may serve several threads, and each sees its own results.
    The results are not pickled (a ``threading.local`` cannot be, and past calls do not travel)."""

    def _init_per_thread_results(self) -> None:
        self._last = threading.local()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_last", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._last = threading.local()
