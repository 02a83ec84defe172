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
