"""Splitting a model at a layer with torch.fx: the network after the layer as its own module.

Used by Ablation-CAM to run only the tail of the network for every ablated copy of the layer's
output. ``split_after`` raises (with the reason) when the model cannot be split there.

Thread safety: ``torch.fx.Tracer.trace`` patches ``nn.Module.__call__`` and ``__getattr__`` for the
whole process while it traces. Our tracer lets every call from another thread through untouched
(plain module call, plain attribute), and our traces run one at a time (``_TRACE_LOCK``): two
overlapping patchers would otherwise restore each other's wrappers in the wrong order.
Generated source that fx registers in ``linecache`` is dropped when the split is garbage collected.
"""

from __future__ import annotations

import linecache
import operator
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import fx, nn

_TRACE_LOCK = threading.Lock()


class _LeafTracer(fx.Tracer):
    """Traces the model but keeps the target layer as one opaque call; other threads pass through."""

    def __init__(self, leaf: nn.Module) -> None:
        super().__init__()
        self.leaf = leaf
        self._owner: Optional[int] = None

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        with _TRACE_LOCK:
            self._owner = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._owner = None

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if threading.get_ident() != self._owner:
            return forward(*args, **kwargs)  # another thread's model call during our trace: run it as usual
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: Dict[str, Any]) -> Any:
        if threading.get_ident() != self._owner:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is self.leaf or super().is_leaf_module(m, module_qualified_name)


@dataclass
class TailSplit:
    """The network after a target layer: ``tail(layer_output, *crossing)`` gives the model output.

    ``head(x)`` returns the ``crossing`` values (computed before the layer, used after it); it is
    None when there are none.
    """

    tail: fx.GraphModule
    head: Optional[fx.GraphModule]
    verified: bool = False

    def crossing(self, x: torch.Tensor) -> List[Any]:
        if self.head is None:
            return []
        return list(self.head(x))


def split_after(model: nn.Module, layer: nn.Module) -> TailSplit:
    """Split ``model`` at ``layer`` with torch.fx; raises (with the reason) when it cannot."""
    tracer = _LeafTracer(layer)
    graph = tracer.trace(model)
    root = _tracked(fx.GraphModule(tracer.root, graph))
    name = next(n for n, m in model.named_modules() if m is layer)
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1:
        raise RuntimeError(f"the target layer is called {len(calls)} times in the traced graph")
    target = calls[0]
    if any(u.op == "call_function" and u.target is operator.getitem for u in target.users):
        raise RuntimeError("the target layer returns a tuple or list")
    nodes = list(graph.nodes)
    pos = nodes.index(target)
    before, after = nodes[:pos], nodes[pos + 1 :]
    before_set = set(before)
    crossing: List[fx.Node] = []
    for n in after:
        for a in n.all_input_nodes:
            if a in before_set and a.op != "get_attr" and a not in crossing:
                crossing.append(a)

    tail = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {target: tail.placeholder("layer_output")}
    for i, n in enumerate(crossing):
        env[n] = tail.placeholder(f"crossing_{i}")
    for n in before:  # parameters and buffers used after the layer
        if n.op == "get_attr" and any(u in after for u in n.users):
            env[n] = tail.node_copy(n, lambda a: env[a])
    for n in after:
        env[n] = tail.node_copy(n, lambda a: env[a])
    tail.lint()

    head_gm = None
    if crossing:
        head = fx.Graph()
        henv: Dict[fx.Node, fx.Node] = {}
        for n in before:
            henv[n] = head.node_copy(n, lambda a: henv[a])
        head.output(tuple(henv[n] for n in crossing))
        head_gm = _tracked(fx.GraphModule(root, head))
        head_gm.graph.eliminate_dead_code()
        head_gm.graph.lint()
        head_gm.recompile()
        _tracked(head_gm)
    return TailSplit(tail=_tracked(fx.GraphModule(root, tail)), head=head_gm)


def _tracked(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop the source fx generated for ``gm``'s current code once ``gm`` is garbage collected."""
    weakref.finalize(gm, _forget_source, type(gm).forward.__code__.co_filename)
    return gm


def _forget_source(key: str) -> None:
    """Drop the generated source fx cached for a GraphModule (``linecache`` and fx's own loader)."""
    linecache.cache.pop(key, None)
    try:
        from torch.fx.graph_module import _loader
    except ImportError:  # a torch without the private loader: nothing more to drop
        return
    getattr(_loader, "eval_cache", {}).pop(key, None)


def pooled_linear_head(split: TailSplit) -> Optional[nn.Linear]:
    """The ``nn.Linear`` of a tail that is exactly global average pooling, flatten and one linear layer.

    Such a tail is linear in the pooled channels, so zeroing channel k of the layer output lowers
    class c's logit by exactly ``W[c, k] * mean(A_k)`` (Ablation-CAM's closed form). ``None`` for
    any other tail (a crossing value, a non-linearity, another pooling, ...).
    """
    tail = split.tail
    nodes = list(tail.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    ops = [n for n in nodes if n.op not in ("placeholder", "output")]
    if split.head is not None or len(inputs) != 1 or len(ops) != 3:
        return None
    pool, flat, fc = ops

    def module(node: fx.Node) -> Optional[nn.Module]:
        return tail.get_submodule(node.target) if node.op == "call_module" else None

    pooling = module(pool)
    if not (isinstance(pooling, nn.AdaptiveAvgPool2d) and pooling.output_size in (1, (1, 1))):
        return None
    flattens = (flat.op == "call_function" and flat.target is torch.flatten) or (
        flat.op == "call_method" and flat.target == "flatten"
    )
    linear = module(fc)
    if not (
        pool.args == (inputs[0],)
        and flattens
        and flat.args == (pool, 1)
        and not flat.kwargs
        and isinstance(linear, nn.Linear)
        and fc.args == (flat,)
        and not fc.kwargs
        and nodes[-1].args == (fc,)
    ):
        return None
    return linear
