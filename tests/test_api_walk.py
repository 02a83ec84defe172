"""pytorch-grad-cam 1.5.7's public API, walked item by item: pytorch_cam must offer all of it.

Every item is its own test id (the peer's dotted path), so a failing run reads as a to-do list.

What counts as the peer's public API (``pytorch_grad_cam`` is imported, never run):

* every module of the package, subpackages included (``pkgutil.walk_packages``):
  ``pytorch_grad_cam.X.Y`` must be importable as ``pytorch_cam.X.Y``;
* in each module, the names without a leading underscore that are
  - classes and functions *defined* there (``obj.__module__`` is that module);
  - module-level constants assigned in its source (``NAME = ...`` at top level), equal in value;
  - in a package ``__init__`` only: what it re-exports from other peer modules (deliberate API,
    e.g. ``pytorch_grad_cam.GradCAM``; ours must be the very object of our defining module) and
    module aliases (``pytorch_grad_cam.model_targets``).
  What a plain module merely imports (``np``, ``torch``, ``List``, ``BaseCAM`` in ``grad_cam.py``,
  ``scale_cam_image`` in ``base_cam.py``) is an implementation detail and is not required;
* for each class: its constructor signature, its peer base classes (ours must subclass the mapped
  base, so ``isinstance`` checks keep working), the methods, static methods and properties in its
  own ``__dict__`` that are public or protocol dunders (``__call__``, ``__enter__``, ``__exit__``,
  ``__del__``, ...), and the public instance attributes it assigns as ``self.x = ...`` in
  ``__init__``/``forward``/``__call__`` (checked on an instance of ours built with the arguments
  the peer's constructor requires, see ``_required_arguments``; ``BaseCAM`` through ``GradCAM``).

Signature rule, peer parameter p against ours:

* positional parameters: same position, name and kind;
* keyword-only parameters: ours accepts the name as a keyword;
* defaults: where p has one, ours has an equal one (``_same_value``); where p has none, ours may
  add one (every peer call still works);
* our extra parameters follow the peer's and have defaults (or are ``*args``/``**kwargs``);
* a peer ``*args``/``**kwargs`` must exist in ours too, unless the peer only passes it on
  (``f(*args, **kwargs)``): such a pass-through promises what its callee promises, and the callee
  is walked where it is defined.

Default values compare with ``_same_value``: peer classes/functions as the mapped pytorch_cam
object (``base_method=GradCAM``), instances of peer classes by the mapped class, numpy arrays and
tensors by shape and values, lists and tuples element by element (a tuple default is as good as a
list), floats to 1e-12, anything else with ``==``.

``DELIBERATE_DIFFERENCES`` is the one list of intended incompatibilities (the README repeats it).
A key is an item id (the whole item may differ), ``item_id(param)``: only that parameter's
default differs (names, order and kinds still must match), or ``item_id:aspect``: a difference in
behaviour, which no signature shows; each of those has a probe in ``_BEHAVIOUR_PROBES`` that runs
both libraries on a small input. Each entry must still be a difference: an entry whose item (or
probe) no longer differs is reported as stale.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import pkgutil
import textwrap
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from conftest import TinyCNN

peer_package = pytest.importorskip("pytorch_grad_cam")

PEER = "pytorch_grad_cam"
OURS = "pytorch_cam"
PEER_VERSION = "1.5.7"

_DFF = "pytorch_grad_cam.feature_factorization.deep_feature_factorization"
_NO_HOOKS_LEFT = "hooks exist only during a call, so there is nothing to release when the object is collected"

_AUTO_BATCH = "'auto' times a few chunk sizes on the first chunks and keeps the fastest; an int pins it"
_POSITIONAL_NAMES = (
    "the peer names the (layer, targets) slots of get_cam_weights/get_cam_image differently in BaseCAM "
    "(target_layers, targets) and in its subclasses (target_layer, target_category); BaseCAM calls them "
    "positionally, and ours keeps one set of names"
)
_RENAMED_SLOTS = [
    "ablation_cam.AblationCAM.get_cam_weights",
    "score_cam.ScoreCAM.get_cam_weights",
    "shapley_cam.ShapleyCAM.get_cam_weights",
    "fullgrad_cam.FullGrad.compute_cam_per_layer",
    "eigen_cam.EigenCAM.get_cam_image",
    "eigen_grad_cam.EigenGradCAM.get_cam_image",
    "fem.FEM.get_cam_image",
    "grad_cam_elementwise.GradCAMElementWise.get_cam_image",
    "hirescam.HiResCAM.get_cam_image",
    "kpca_cam.KPCA_CAM.get_cam_image",
    "layer_cam.LayerCAM.get_cam_image",
    "seg_eigen_cam.SegEigenCAM.get_cam_image",
]
_STATELESS = "ours passes the call's state as arguments (LayerContext) instead of keeping it on the object"
_NO_MODULE_SWAP = (
    "the peer replaces the user's modules in place during a call; ours never modifies the model (call-scoped hooks)"
)
_MULTILAYER = (
    "the peer's multi-layer AblationCAM raises TypeError on every call (its get_cam_weights takes one argument "
    "fewer than BaseCAM passes); ours is a working implementation with call-scoped hooks, so these helpers of the "
    "broken one, which swap the user's modules, have no counterpart"
)
_SESS = "ours scores the patches of every image and scale in shared batches; the peer's per-image steps do not exist"
_INTERNALS = {
    "ablation_cam.AblationCAM.save_activation": _STATELESS,
    "ablation_cam.AblationCAM.assemble_ablation_scores": _STATELESS,
    "ablation_cam_multilayer.AblationCAM.set_ablation_layers": _MULTILAYER,
    "ablation_cam_multilayer.AblationCAM.unset_ablation_layers": _MULTILAYER,
    "ablation_cam_multilayer.AblationCAM.set_ablation_layer_batch_indices": _MULTILAYER,
    "ablation_cam_multilayer.AblationCAM.trim_ablation_layer_batch_indices": _MULTILAYER,
    "ablation_cam_multilayer.AblationCAM.get_cam_weights": _MULTILAYER,
    "ablation_cam_multilayer.AblationLayer": _MULTILAYER,
    "guided_backprop.GuidedBackpropReLU": _NO_MODULE_SWAP,
    "guided_backprop.GuidedBackpropReLUasModule": _NO_MODULE_SWAP,
    "guided_backprop.GuidedBackpropReLUModel.recursive_replace_relu_with_guidedrelu": _NO_MODULE_SWAP,
    "guided_backprop.GuidedBackpropReLUModel.recursive_replace_guidedrelu_with_relu": _NO_MODULE_SWAP,
    "refine_cam.RefineCAM.base_cam_per_layer": "one base CAM explains every layer (a layer's map does not depend on "
    "the other layers), so there is no per-layer list of CAM objects",
    "sess.SESS.forward_single_image": _SESS,
    "sess.SESS.collect_patches": _SESS,
    "sess.SESS.get_target": _SESS,
    "sess.SESS.get_scores": _SESS,
    "sess.SESS.paste_cam": _SESS,
    "sess.sliding_window": _SESS,
}

#: item id (or ``item_id(param)``) -> why pytorch_cam differs on purpose.
DELIBERATE_DIFFERENCES: Dict[str, str] = {
    "pytorch_grad_cam.utils.reshape_transforms.vit_reshape_transform(height)": (
        "None (the default) infers the patch grid from the token count and the input size; the peer hard-codes 14"
    ),
    "pytorch_grad_cam.utils.reshape_transforms.vit_reshape_transform(width)": (
        "None (the default) infers the patch grid from the token count and the input size; the peer hard-codes 14"
    ),
    "pytorch_grad_cam.utils.reshape_transforms.swinT_reshape_transform(height)": (
        "None (the default) takes the grid from a (B, H, W, C) map or infers it from the input size; the peer "
        "hard-codes 7"
    ),
    "pytorch_grad_cam.utils.reshape_transforms.swinT_reshape_transform(width)": (
        "None (the default) takes the grid from a (B, H, W, C) map or infers it from the input size; the peer "
        "hard-codes 7"
    ),
    f"{_DFF}.run_dff_on_image(reshape_transform)": (
        "the peer's default is the typing object Optional[Callable] (a bug: it would be called as a transform); "
        "ours is None"
    ),
    f"{_DFF}.DeepFeatureFactorization.__del__": _NO_HOOKS_LEFT,
    "pytorch_grad_cam.base_cam.BaseCAM.__del__": _NO_HOOKS_LEFT,
    "pytorch_grad_cam.finer_cam.FinerCAM.__del__": _NO_HOOKS_LEFT,
    "pytorch_grad_cam.sess.SESS.__del__": _NO_HOOKS_LEFT,
    # Defaults chosen for our implementation.
    "pytorch_grad_cam.base_cam.BaseCAM(uses_gradients)": (
        "None lets each method decide (ScoreCAM, EigenCAM, ... need no backward); the peer's True is overridden by "
        "every gradient-free subclass anyway"
    ),
    "pytorch_grad_cam.ablation_cam.AblationCAM(ablation_layer)": (
        "None zeroes each channel exactly (the paper's ablation), batched over images and channels; passing "
        "AblationLayer() gives the peer's semantics"
    ),
    "pytorch_grad_cam.ablation_cam.AblationCAM(batch_size)": _AUTO_BATCH,
    # The peer's parameter names for the same positional slots differ between its own classes.
    **{f"pytorch_grad_cam.{item}": _POSITIONAL_NAMES for item in _RENAMED_SLOTS},
    # Internals of the peer's implementation, which keeps state on the object or swaps the user's modules.
    **{f"pytorch_grad_cam.{item}": reason for item, reason in _INTERNALS.items()},
    # Behaviour (see _BEHAVIOUR_PROBES).
    "pytorch_grad_cam.utils.svd_on_activations.get_2d_projection:sign": (
        "the principal component's sign is fixed (largest magnitude positive, as in "
        "get_2d_projection_with_sign_correction); the peer keeps LAPACK's arbitrary sign, which can invert the map"
    ),
    "pytorch_grad_cam.eigen_cam.EigenCAM:sign": (
        "projects on the sign-corrected component, so the map highlights the dominant structure; the peer's "
        "map can come out inverted (the ReLU of the negated projection)"
    ),
    "pytorch_grad_cam.utils.find_layers.find_layer_types_recursive:isinstance": (
        "subclasses match (timm's Conv2dSame is an nn.Conv2d) and a module registered twice is listed once; "
        "the peer compares exact types and repeats shared modules"
    ),
}

# Protocol methods that are part of a class's API (other dunders are Python machinery).
_PROTOCOL_DUNDERS = {"__call__", "__enter__", "__exit__", "__del__", "__len__", "__iter__", "__getitem__"}
# Methods whose ``self.x = ...`` assignments make public instance state.
_STATE_METHODS = {"__init__", "forward", "__call__"}
# Peer classes that cannot produce a result themselves: their instance attributes are checked
# on our instance of a concrete subclass.
_CONCRETE_STAND_INS = {"pytorch_grad_cam.base_cam.BaseCAM": "pytorch_grad_cam.grad_cam.GradCAM"}


def _ours_path(peer_path: str) -> str:
    return OURS + peer_path[len(PEER) :]


def _is_peer_module_name(name: Optional[str]) -> bool:
    return isinstance(name, str) and (name == PEER or name.startswith(PEER + "."))


def _peer_modules() -> List[ModuleType]:
    found = [peer_package]
    for info in pkgutil.walk_packages(peer_package.__path__, PEER + "."):
        found.append(importlib.import_module(info.name))
    return sorted(found, key=lambda m: m.__name__)


def _top_level_assignments(module: ModuleType) -> List[str]:
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return []
    names = []
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names += [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    return names


def _state_attributes(cls: type) -> Dict[str, str]:
    """Public ``self.x = ...`` targets in the class's own __init__/forward/__call__ -> that method."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    found: Dict[str, str] = {}
    for node in tree.body[0].body:
        if isinstance(node, ast.FunctionDef) and node.name in _STATE_METHODS:
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.ctx, ast.Store)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                    and not sub.attr.startswith("_")
                    and sub.attr not in found
                ):
                    found[sub.attr] = node.name
    return found


def _resolve(path: str) -> Any:
    """The object at a dotted pytorch_cam path (module, then attributes); AttributeError/ImportError if absent."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and not name.startswith(err.name):
                raise  # the module exists but one of its own imports is missing
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module on the path {path}")


def _mapped(peer_obj: Any) -> Any:
    """Our counterpart of a peer class or function: same module path and qualified name."""
    return _resolve(_ours_path(f"{peer_obj.__module__}.{peer_obj.__qualname__}"))


def _peer_defined(obj: Any) -> bool:
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and _is_peer_module_name(getattr(obj, "__module__", None))


def _same_value(peer: Any, ours: Any) -> bool:
    if peer is ours:
        return True
    if _peer_defined(peer):
        try:
            return _mapped(peer) is ours
        except (AttributeError, ImportError):
            return False
    if _is_peer_module_name(type(peer).__module__):
        try:
            return isinstance(ours, _mapped(type(peer)))
        except (AttributeError, ImportError):
            return False
    if isinstance(peer, (np.ndarray, torch.Tensor)) or isinstance(ours, (np.ndarray, torch.Tensor)):
        try:
            a, b = np.asarray(peer), np.asarray(ours)
        except Exception:
            return False
        return a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(peer, (list, tuple)) and isinstance(ours, (list, tuple)):
        return len(peer) == len(ours) and all(_same_value(p, o) for p, o in zip(peer, ours))
    if isinstance(peer, bool) or isinstance(ours, bool):
        return type(peer) is type(ours) and peer == ours
    if isinstance(peer, float) and isinstance(ours, (int, float)):
        return math.isclose(peer, ours, rel_tol=1e-12, abs_tol=0.0)
    try:
        return bool(peer == ours)
    except Exception:
        return False


def _only_passed_on(func: Callable, name: str) -> bool:
    """Whether the peer function uses ``*name``/``**name`` only to pass it on to another call."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError):
        return False
    passed = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Starred) or (isinstance(node, ast.keyword) and node.arg is None)
    }
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name]
    return bool(uses) and all(id(n) in passed for n in uses)


_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _fmt(p: inspect.Parameter) -> str:
    return p.name + ("" if p.default is p.empty else f"={p.default!r}")


def compare_signatures(item_id: str, peer_fn: Callable, ours_fn: Callable) -> List[Tuple[str, str]]:
    """(key, problem) pairs: a differing default is keyed ``item_id(param)``, anything else ``item_id``."""
    try:
        peer_sig = inspect.signature(peer_fn)
    except (TypeError, ValueError):
        return []  # a builtin without a signature promises nothing checkable
    try:
        ours_sig = inspect.signature(ours_fn)
    except (TypeError, ValueError) as err:
        return [(item_id, f"our signature cannot be read: {err}")]
    peer_params = list(peer_sig.parameters.values())
    ours_params = list(ours_sig.parameters.values())
    ours_by_name = {p.name: p for p in ours_params}
    problems: List[Tuple[str, str]] = []
    reported = set()  # our parameters already named in a problem

    def check_default(p: inspect.Parameter, q: inspect.Parameter) -> None:
        if p.default is not p.empty and (q.default is q.empty or not _same_value(p.default, q.default)):
            problems.append((f"{item_id}({p.name})", f"default of {p.name!r}: peer {p.default!r}, ours {q.default!r}"))

    positional = [p for p in peer_params if p.kind in _POSITIONAL]
    for i, p in enumerate(positional):
        q = ours_params[i] if i < len(ours_params) else None
        if q is None or q.name != p.name or q.kind != p.kind:
            got = "nothing" if q is None else f"{_fmt(q)} ({q.kind.description})"
            problems.append((item_id, f"position {i}: peer has {_fmt(p)} ({p.kind.description}), ours has {got}"))
            reported.add(q.name if q is not None else None)
            continue
        check_default(p, q)
    for p in peer_params:
        if p.kind == p.KEYWORD_ONLY:
            q = ours_by_name.get(p.name)
            if q is None or q.kind not in (q.KEYWORD_ONLY, q.POSITIONAL_OR_KEYWORD):
                problems.append((item_id, f"keyword {p.name!r} is not accepted"))
            else:
                check_default(p, q)
        elif p.kind in _VAR:
            if any(q.kind == p.kind for q in ours_params) or _only_passed_on(peer_fn, p.name):
                continue
            star = "*" if p.kind == p.VAR_POSITIONAL else "**"
            problems.append((item_id, f"peer takes {star}{p.name} (used beyond passing it on); ours does not"))
    if any(p.kind in _VAR and _only_passed_on(peer_fn, p.name) for p in peer_params):
        return problems  # our explicit parameters stand in for what the peer passes on
    peer_names = {p.name for p in peer_params}
    for i, q in enumerate(ours_params):
        if q.name in peer_names or q.name in reported or q.kind in _VAR:
            continue
        if q.default is q.empty:
            problems.append((item_id, f"our extra parameter {q.name!r} has no default"))
        elif q.kind in _POSITIONAL and i < len(positional):
            problems.append((item_id, f"our extra parameter {q.name!r} sits among the peer's"))
    return problems


@dataclass
class Item:
    id: str  # the peer's dotted path, the test id and DELIBERATE_DIFFERENCES key
    kind: str  # module | name | alias | constant | member | attribute
    peer: Any = None
    owner: Any = None  # the peer class, for members and attributes
    extra: Dict[str, Any] = field(default_factory=dict)


def _collect() -> List[Item]:
    items: List[Item] = []
    for module in _peer_modules():
        mod_name = module.__name__
        items.append(Item(mod_name, "module", module))
        is_package = hasattr(module, "__path__")
        constants = set(_top_level_assignments(module))
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_"):
                continue
            path = f"{mod_name}.{name}"
            if inspect.ismodule(obj):
                own_child = obj.__name__ == path
                if is_package and _is_peer_module_name(obj.__name__) and not own_child and obj is not module:
                    items.append(Item(path, "alias", obj))
                continue
            if _peer_defined(obj):
                if obj.__module__ == mod_name:
                    items.append(Item(path, "name", obj))
                    if inspect.isclass(obj):
                        items += _class_items(path, obj)
                elif is_package:
                    items.append(Item(path, "reexport", obj))
                continue
            if name in constants and not callable(obj):
                items.append(Item(path, "constant", obj))
    ids = [i.id for i in items]
    assert len(ids) == len(set(ids)), "two walked items share an id"
    return items


def _class_items(path: str, cls: type) -> List[Item]:
    items = []
    for name, raw in cls.__dict__.items():
        if name.startswith("_") and name not in _PROTOCOL_DUNDERS:
            continue
        if isinstance(raw, (staticmethod, classmethod, property)) or inspect.isfunction(raw):
            items.append(Item(f"{path}.{name}", "member", raw, owner=cls))
    for attr, method in _state_attributes(cls).items():
        if attr not in cls.__dict__:
            items.append(
                Item(f"{path}.{attr}", "attribute", attr, owner=cls, extra={"after_call": method != "__init__"})
            )
    return items


ITEMS = _collect()
_BY_ID = {item.id: item for item in ITEMS}


# ---- building our instances with the peer's required constructor arguments ---------------------------------


def _required_arguments(model: torch.nn.Module) -> Dict[str, Any]:
    """Values for the peer constructors' parameters without defaults, by parameter name."""
    ours_gradcam = _resolve(f"{OURS}.grad_cam.GradCAM")
    return {
        "model": model,
        "target_layers": [model.features],
        "target_layer": model.features,
        "layer": model.features,
        "reshape_transform": None,
        "indices": [],
        "category": 1,
        "main_category": 0,
        "comparison_categories": [1],
        "alpha": 1.0,
        "mask": np.ones((8, 8), np.float32),
        "labels": [1],
        "bounding_boxes": np.array([[0.0, 0.0, 4.0, 4.0]], np.float32),
        "percentile": 50,
        "imputer": lambda img, mask: img,
        "perturbation": lambda img, mask: img,
        "base_method": ours_gradcam(model, [model.features]),
    }


_INSTANCES: Dict[Tuple[str, bool], Any] = {}


def _our_instance(peer_cls: type, after_call: bool) -> Any:
    """Our counterpart of ``peer_cls`` built with the arguments the peer requires (after one call
    for CAMs, whose peer state includes what a call leaves, e.g. ``outputs``)."""
    key = f"{peer_cls.__module__}.{peer_cls.__qualname__}"
    if (key, after_call) in _INSTANCES:
        return _INSTANCES[key, after_call]
    stand_in = _CONCRETE_STAND_INS.get(key)
    if stand_in is not None:
        peer_cls = _resolve(stand_in)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    values = _required_arguments(model)
    args = []
    for p in inspect.signature(peer_cls).parameters.values():
        if p.kind in _POSITIONAL and p.default is p.empty:
            if p.name not in values:
                raise KeyError(f"_required_arguments has no value for {key}'s parameter {p.name!r}; add one")
            args.append(values[p.name])
    obj = _mapped(peer_cls)(*args)
    if after_call:  # state a call leaves behind, e.g. BaseCAM.outputs: call it as the peer is called
        obj(torch.rand(1, 3, 16, 16), None)
    _INSTANCES[key, after_call] = obj
    return obj


# ---- checks ---------------------------------------------------------------------------------------------------


def _check(item: Item) -> List[Tuple[str, str]]:
    ours_path = _ours_path(item.id)
    if item.kind == "module":
        try:
            importlib.import_module(ours_path)
        except ModuleNotFoundError as err:
            return [(item.id, f"module {ours_path} is missing ({err})")]
        return []
    if item.kind == "attribute":
        try:
            obj = _our_instance(item.owner, item.extra["after_call"])
        except Exception as err:  # building with the peer's arguments is itself the check
            return [
                (item.id, f"cannot build {_ours_path(item.id.rsplit('.', 1)[0])} with the peer's arguments: {err!r}")
            ]
        if not hasattr(obj, item.peer):
            return [(item.id, f"instances of {type(obj).__name__} have no attribute {item.peer!r}")]
        return []
    try:
        ours = _resolve(ours_path)
    except (AttributeError, ImportError) as err:
        return [(item.id, f"{ours_path} is missing ({err})")]
    if item.kind == "alias":
        expected = _ours_path(item.peer.__name__)
        ok = inspect.ismodule(ours) and ours.__name__ == expected
        return [] if ok else [(item.id, f"{ours_path} should be the module {expected}, got {ours!r}")]
    if item.kind == "reexport":
        try:
            canonical = _mapped(item.peer)
        except (AttributeError, ImportError):
            return []  # reported at the defining module's item
        return [] if ours is canonical else [(item.id, f"{ours_path} is not {canonical!r}, a second object")]
    if item.kind == "constant":
        ok = _same_value(item.peer, ours)
        return [] if ok else [(item.id, f"value differs: peer {item.peer!r}, ours {ours!r}")]
    if item.kind == "name":
        problems = []
        if inspect.isclass(item.peer):
            if not inspect.isclass(ours):
                return [(item.id, f"the peer's class is a {type(ours).__name__} here")]
            for base in item.peer.__bases__:
                if _peer_defined(base):
                    try:
                        ours_base = _mapped(base)
                    except (AttributeError, ImportError):
                        problems.append((item.id, f"base class {base.__qualname__} has no counterpart"))
                        continue
                    if not issubclass(ours, ours_base):
                        problems.append((item.id, f"not a subclass of {ours_base.__module__}.{ours_base.__qualname__}"))
        return problems + compare_signatures(item.id, item.peer, ours)
    # member
    peer_member = getattr(item.owner, item.id.rsplit(".", 1)[1])
    if isinstance(item.peer, property):
        return []
    if not callable(ours):
        return [(item.id, f"{ours_path} is not callable")]
    if isinstance(item.peer, (staticmethod, classmethod)):
        raw = inspect.getattr_static(_resolve(ours_path.rsplit(".", 1)[0]), ours_path.rsplit(".", 1)[1])
        if type(raw) is not type(item.peer):
            return [(item.id, f"the peer's {type(item.peer).__name__} is a {type(raw).__name__} here")]
    return compare_signatures(item.id, peer_member, ours)


def _expected_keys(item_id: str) -> List[str]:
    """The signature-level entries of an item (behavioural ``item:aspect`` entries are probed apart)."""
    return [k for k in DELIBERATE_DIFFERENCES if k == item_id or k.startswith(item_id + "(")]


@pytest.mark.parametrize("item", ITEMS, ids=[item.id for item in ITEMS])
def test_peer_api_item(item: Item) -> None:
    problems = _check(item)
    expected = _expected_keys(item.id)
    # A class that differs as a whole takes its members with it.
    whole_item_exempt = item.id in DELIBERATE_DIFFERENCES or any(
        item.id.startswith(k + ".") for k in DELIBERATE_DIFFERENCES if "(" not in k and ":" not in k
    )
    unexpected = [msg for key, msg in problems if not whole_item_exempt and key not in expected]
    found_keys = {key for key, _ in problems}
    if item.id in found_keys and not whole_item_exempt:
        expected = []  # the item itself is incompatible: its parameter entries cannot be judged yet
    stale = [k for k in expected if (k == item.id and not problems) or (k != item.id and k not in found_keys)]
    messages = [f"incompatible with {PEER} {PEER_VERSION}: {m}" for m in unexpected]
    messages += [f"DELIBERATE_DIFFERENCES[{k!r}] is stale: ours now matches the peer; remove the entry" for k in stale]
    assert not messages, "\n".join(messages)


def test_peer_version() -> None:
    from importlib.metadata import version

    assert version("grad-cam") == PEER_VERSION, "the walk is pinned to grad-cam 1.5.7 (pyproject's test extra)"


def test_walk_finds_the_known_api() -> None:
    """The walk itself must not silently shrink (a broken rule would make every check vacuous)."""
    kinds = {kind: sum(i.kind == kind for i in ITEMS) for kind in ("module", "name", "member", "attribute")}
    assert kinds["module"] >= 38 and kinds["name"] >= 75 and kinds["member"] >= 90 and kinds["attribute"] >= 50, kinds
    for must in (
        "pytorch_grad_cam.base_cam.BaseCAM.forward",
        "pytorch_grad_cam.base_cam.BaseCAM.outputs",
        "pytorch_grad_cam.metrics.road.ROADCombined",
        "pytorch_grad_cam.utils.image.scale_accross_batch_and_channels",
        "pytorch_grad_cam.utils.deprocess_image",
        "pytorch_grad_cam.GradCAM",
        "pytorch_grad_cam.finer_cam.DEFAULT_COMPARISON_CATEGORIES",
    ):
        assert must in _BY_ID, must
    # Implementation imports are not API.
    assert "pytorch_grad_cam.grad_cam.BaseCAM" not in _BY_ID and "pytorch_grad_cam.utils.image.np" not in _BY_ID


def test_deliberate_differences_name_walked_items() -> None:
    unknown = [k for k in DELIBERATE_DIFFERENCES if k.split("(")[0].split(":")[0] not in _BY_ID]
    assert not unknown, f"DELIBERATE_DIFFERENCES keys that are no walked item: {unknown}"
    assert all(isinstance(v, str) and v.strip() for v in DELIBERATE_DIFFERENCES.values())


# ---- behavioural differences ------------------------------------------------------------------------------------


def _negative_projection_input(shape: Tuple[int, ...]) -> np.ndarray:
    """Activations on which the peer's projection (LAPACK's sign) comes out clearly negative."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection as peer_projection

    for seed in range(100):
        acts = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
        proj = peer_projection(acts)[0]
        if abs(proj.min()) > 1.2 * abs(proj.max()):
            return acts
    raise AssertionError("no input found on which the peer's projection is negative; the probe needs a new search")


def _probe_projection_sign() -> Optional[str]:
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection as peer_projection

    from pytorch_cam.utils.svd_on_activations import get_2d_projection

    acts = _negative_projection_input((1, 4, 5, 5))
    ours, peer = get_2d_projection(acts), peer_projection(acts)
    if np.allclose(ours, peer, atol=1e-4):
        return None
    np.testing.assert_allclose(ours, -peer, atol=1e-4, err_msg="ours differs from the peer by more than the sign")
    return "ours is the peer's projection negated"


def _probe_eigencam_sign() -> Optional[str]:
    from pytorch_grad_cam.utils.image import scale_cam_image as peer_scale
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection as peer_projection

    # The explained layer is an Identity: its activations are the input, chosen so that the
    # peer's component points the "wrong" way.
    x = torch.from_numpy(_negative_projection_input((1, 3, 6, 6)))

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Identity(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2)
        ).eval()

    peer_model, ours_model = model(), model()
    peer_map = _resolve(f"{PEER}.eigen_cam.EigenCAM")(peer_model, [peer_model[0]])(x, None)
    ours_map = _resolve(f"{OURS}.eigen_cam.EigenCAM")(ours_model, [ours_model[0]])(x, None)
    if np.allclose(ours_map, peer_map, atol=1e-3):
        return None
    flipped = peer_scale(np.maximum(-peer_projection(x.numpy()), 0))
    np.testing.assert_allclose(ours_map, flipped, atol=1e-3, err_msg="ours differs from the peer beyond the sign")
    return "ours is the map of the peer's projection negated"


def _probe_find_layer_types() -> Optional[str]:
    from pytorch_grad_cam.utils.find_layers import find_layer_types_recursive as peer_find

    from pytorch_cam.utils.find_layers import find_layer_types_recursive

    class SubConv(torch.nn.Conv2d):
        pass

    shared = torch.nn.Conv2d(1, 1, 1)
    model = torch.nn.Sequential(shared, SubConv(1, 1, 1), torch.nn.Sequential(shared))
    ours, peer = find_layer_types_recursive(model, [torch.nn.Conv2d]), peer_find(model, [torch.nn.Conv2d])
    if ours == peer:
        return None
    assert ours == [shared, model[1]] and peer == [shared, shared], (ours, peer)
    return "ours lists the subclass instance and the shared module once"


_BEHAVIOUR_PROBES: Dict[str, Callable[[], Optional[str]]] = {
    "pytorch_grad_cam.utils.svd_on_activations.get_2d_projection:sign": _probe_projection_sign,
    "pytorch_grad_cam.eigen_cam.EigenCAM:sign": _probe_eigencam_sign,
    "pytorch_grad_cam.utils.find_layers.find_layer_types_recursive:isinstance": _probe_find_layer_types,
}
_BEHAVIOUR_KEYS = sorted(k for k in DELIBERATE_DIFFERENCES if ":" in k)


@pytest.mark.parametrize("key", _BEHAVIOUR_KEYS)
def test_behavioural_difference_still_differs(key: str) -> None:
    assert key in _BEHAVIOUR_PROBES, f"behavioural entry {key!r} needs a probe in _BEHAVIOUR_PROBES"
    observed = _BEHAVIOUR_PROBES[key]()
    assert observed is not None, f"DELIBERATE_DIFFERENCES[{key!r}] is stale: ours now behaves as the peer"


def test_every_probe_has_an_entry() -> None:
    assert sorted(_BEHAVIOUR_PROBES) == _BEHAVIOUR_KEYS


# ---- the comparison rules themselves ----------------------------------------------------------------------------


def test_compare_signatures_rules() -> None:
    def peer(a, b, c=1, d=(0.5, 0.5)): ...

    def same(a, b, c=1, d=[0.5, 0.5], *, extra=None): ...  # noqa: B006

    def renamed(a, x, c=1, d=(0.5, 0.5)): ...

    def keyword_only(a, *, b, c=1, d=(0.5, 0.5)): ...

    def other_default(a, b, c=2, d=(0.5, 0.5)): ...

    def inserted(a, new=0, b=None, c=1, d=(0.5, 0.5)): ...

    def extra_required(a, b, c=1, d=(0.5, 0.5), e=None, *, f): ...

    def added_default(a, b=None, c=1, d=(0.5, 0.5)): ...

    assert compare_signatures("f", peer, same) == []
    assert compare_signatures("f", peer, added_default) == []
    assert len(compare_signatures("f", peer, renamed)) == 1
    assert "position 1: peer has b" in compare_signatures("f", peer, renamed)[0][1]
    assert [k for k, _ in compare_signatures("f", peer, keyword_only)] == ["f", "f", "f"]  # b, c, d moved
    assert compare_signatures("f", peer, other_default) == [("f(c)", "default of 'c': peer 1, ours 2")]
    assert "position 1: peer has b" in compare_signatures("f", peer, inserted)[0][1]
    assert compare_signatures("f", peer, extra_required) == [("f", "our extra parameter 'f' has no default")]


def test_pass_through_varargs_are_not_compared() -> None:
    def forwards(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def uses(self, *args, **kwargs):
        return self.forward(*args, **kwargs), kwargs.get("x")

    def explicit(self, input_tensor, targets=None): ...

    assert compare_signatures("f", forwards, explicit) == []
    assert [m for _, m in compare_signatures("f", uses, explicit)] == [
        "peer takes **kwargs (used beyond passing it on); ours does not"
    ]


def test_same_value_rules() -> None:
    assert _same_value([0.5, 0.5], (0.5, 0.5))
    assert not _same_value([0.5, 0.5], (0.485, 0.456))
    assert _same_value(np.arange(3), np.arange(3)) and not _same_value(np.arange(3), np.arange(4))
    assert _same_value(2 / 7, 2 / 7 + 1e-17) and not _same_value(1.0, True)
    assert _same_value(None, None) and not _same_value(None, 0) and not _same_value(False, 0)
    assert _same_value(_resolve(f"{PEER}.grad_cam.GradCAM"), _resolve(f"{OURS}.grad_cam.GradCAM"))
    assert not _same_value(_resolve(f"{PEER}.grad_cam.GradCAM"), _resolve(f"{OURS}.score_cam.ScoreCAM"))
