"""Speed (and ScoreCAM memory) of pytorch_cam against pytorch-grad-cam and torchcam, on this machine.

    python -m benchmarks.speed                      # everything (slow: peers' ScoreCAM runs for minutes)
    python -m benchmarks.speed --quick              # batch 1, slow runs extrapolated: a few minutes
    python -m benchmarks.speed --archs resnet18 --batches 1 8 --methods gradcam scorecam --skip-slow-peers

Prints a markdown table. Every time is the best of ``--reps`` runs after a warm-up, except the
gradient-free methods' slow runs, which run once (on a GPU after one untimed call: see
``time_cell``). A cell marked ``~`` was extrapolated, not
measured: the run was stopped after a fraction (``--fraction``) of its masked/ablated forward
passes and the rest was extrapolated at the measured per-image rate (these methods do the same
work for every channel, so their time is linear in the number of channels scored).

Floors: gradient methods, EigenCAM and the other single-pass methods (ShapleyCAM, KPCA-CAM, FEM,
FinerCAM, RefineCAM, SegEigenCAM; Sobel-CAM, which runs no model, too) = one plain forward pass of
the batch (inference mode); SESS = one per-image forward per patch (window) it explains;
multi-layer AblationCAM = B*C per-image forwards (every ablated copy runs the whole network);
ScoreCAM = P x (best per-image forward time over batch sizes 1..32), where P is the number of
(image, channel) pairs whose mask is not constant (constant masks are all the same input and
need one forward in all); CSKIP-K = min(K, P per image) pairs per image on the same scale;
AblationCAM = one plain forward of the batch (for the activations and the unablated scores)
+ B*C x (best per-image time of the network after the target layer).

Precision and memory format (``--precisions fp32 bf16 [fp16]``): instead of the table above,
one row per (arch, batch, method) with our time at each precision (``precision=`` on the method;
memory format and chunk size ``"auto"``), pytorch-grad-cam's fp32 time, and three floors of the
same kind as above: *eager* (fp32 forwards of contiguous inputs, the floor above), *CL* (fp32,
channels-last inputs) and *bf16+CL* (bf16 autocast, channels-last inputs; fp16+CL too when fp16
is asked for). Every ratio is to the eager floor unless the header says otherwise, so the targets
of issue #13 read off directly. On a shared machine the load drifts by more than the effects
measured here, so the timings are interleaved: a fast row runs ours (each precision), the peer
and the floors' unit forwards in turn, round after round, and keeps the best of each; a long run
(full Score-CAM) has the floors' units measured, interleaved, before each of our runs and after
the last, and takes their median. Per-image floors use each setting's fastest batch size (1-32,
found once per architecture). SS-CAM and IS-CAM run with CSKIP-16 and ``num_samples=8``
(``n`` x the Score-CAM floor). ``--threads 1`` is steadier than two threads on a loaded machine.

Devices: the CPU always; CUDA too when a GPU is visible (``--devices cpu cuda``), each in its own
table, every timing synchronised with the GPU. The memory table is CPU peak RSS.

The peers are benchmark-only dependencies (grad-cam==1.5.7, torchcam==0.5.0).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torchvision
from torch import nn

METHODS = ["gradcam", "gradcam++", "xgradcam", "eigencam", "scorecam", "scorecam+cskip16", "ablationcam"]
# The methods added after the first release: timed with their own floors (see ``floor_of``).
NEW_METHODS = [
    "shapleycam",
    "kpcacam",
    "fem",
    "finercam",
    "refinecam",
    "segeigencam",
    "sess",
    "sobelcam",
    "ablationcam_multilayer",
]
# Score-CAM variants timed in the precision table (num_samples=8, CSKIP-16: see ``PERTURBATION_SAMPLES``).
VARIANT_METHODS = ["sscam+cskip16", "iscam+cskip16"]
ALL_METHODS = METHODS + NEW_METHODS + VARIANT_METHODS
PERTURBATION_SAMPLES = 8  # SS-CAM / IS-CAM noisy copies per channel in the benchmark (their defaults: 35 / 10)
SLOW = {"scorecam", "ablationcam"}  # gradient-free methods whose peers run the whole network per channel
TARGET_CLASS = 281


CPU = torch.device("cpu")


def _no_sync() -> None:
    pass


_SYNC: Callable[[], None] = _no_sync  # torch.cuda.synchronize while timing on a GPU


def set_device(device: torch.device) -> None:
    """Make every timer wait for the device's queued kernels before it reads the clock."""
    global _SYNC
    _SYNC = torch.cuda.synchronize if device.type == "cuda" else _no_sync


class _Stop(Exception):
    """Raised from a forward pre-hook to end a run after its budget of forward rows."""


class RowBudget:
    """Counts the rows (images) of every model forward after the first ``skip_calls`` calls.

    When ``budget`` rows have been scored, the run is stopped and its total time is extrapolated
    from the per-row rate of the rows scored so far.
    """

    def __init__(self, model: nn.Module, total_rows: int, budget: Optional[int], skip_calls: int) -> None:
        self.model, self.total, self.budget, self.skip = model, total_rows, budget, skip_calls
        self.calls = 0
        self.rows = 0
        self.t_first: Optional[float] = None

    def _hook(self, module: nn.Module, args: Any) -> None:
        self.calls += 1
        if self.calls <= self.skip or self.budget is None:
            return  # a full run needs no per-forward clock (and a GPU sync here would stall the queue)
        _SYNC()
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        elif self.budget is not None and self.rows >= self.budget:
            raise _Stop
        x = args[0] if args else None
        self.rows += x.shape[0] if torch.is_tensor(x) else 1

    def run(self, fn: Callable[[], Any]) -> Tuple[float, bool]:
        """(seconds, estimated) for ``fn()``."""
        handle = self.model.register_forward_pre_hook(self._hook)
        t0 = time.perf_counter()
        try:
            fn()
            _SYNC()
            return time.perf_counter() - t0, False
        except _Stop:
            _SYNC()
            now = time.perf_counter()
            done = self.rows  # rows of completed scoring calls (the stopped call never ran)
            rate = (now - self.t_first) / max(done, 1)
            return (now - t0) + rate * max(self.total - done, 0), True
        finally:
            handle.remove()


def best_time(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        _SYNC()
        t = time.perf_counter()
        fn()
        _SYNC()
        times.append(time.perf_counter() - t)
    return min(times)


def build_model(arch: str, device: torch.device = CPU) -> Tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    return model, model.layer4[-1]


def capture(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach()))
    with torch.inference_mode():
        model(x)
    h.remove()
    return store["a"]


def nonconstant_pairs(acts: torch.Tensor) -> torch.Tensor:
    flat = acts.flatten(2)
    return flat.amax(-1) > flat.amin(-1)  # (B, C)


def per_image_forward(model: nn.Module, shape: Tuple[int, ...], sizes=(1, 4, 8, 16, 32), reps: int = 2) -> float:
    best = math.inf
    device = next(model.parameters()).device
    for bs in sizes:
        x = torch.randn(bs, *shape, device=device)
        with torch.inference_mode():
            best = min(best, best_time(lambda x=x: model(x), reps) / bs)
    return best


#: floor settings of the precision table: name -> (precision, input memory format)
FLOOR_SETTINGS: Dict[str, Tuple[str, str]] = {
    "eager": ("fp32", "contiguous"),
    "cl": ("fp32", "channels_last"),
    "bf16cl": ("bf16", "channels_last"),
    "fp16cl": ("fp16", "channels_last"),
}


def plain_forward(model: nn.Module, x: torch.Tensor, setting: str) -> Callable[[], Any]:
    """One plain inference forward of ``x`` in a floor setting (autocast entered per call, as a CAM does)."""
    from pytorch_cam.utils.precision import autocast, to_memory_format

    precision, layout = FLOOR_SETTINGS[setting]
    x = to_memory_format(x, layout)

    def run() -> Any:
        with torch.inference_mode(), autocast(x.device, precision):
            return model(x)

    return run


def fastest_batch_size(model: nn.Module, shape: Tuple[int, ...], setting: str, reps: int) -> int:
    """The batch size (1-32) whose plain forwards in ``setting`` take the least time per image."""
    device = next(model.parameters()).device
    # fp16 autocast has no fast CPU kernels (~20x slower than fp32): small batches tell enough there
    sizes = (1, 4) if setting == "fp16cl" and device.type == "cpu" else (1, 4, 8, 16, 32)
    times = {
        bs: best_time(plain_forward(model, torch.randn(bs, *shape, device=device), setting), reps) / bs for bs in sizes
    }
    return min(times, key=times.__getitem__)


def tail_rows_forward(model: nn.Module, layer: nn.Module, acts: torch.Tensor, setting: str) -> Callable[[], Any]:
    """32 rows of the network after ``layer`` (AblationCAM's ablated copies) in ``setting``."""
    from pytorch_cam.utils.fx_split import split_after
    from pytorch_cam.utils.precision import autocast, to_memory_format

    precision, layout = FLOOR_SETTINGS[setting]
    tail = split_after(model, layer).tail
    rows = to_memory_format(acts.repeat(math.ceil(32 / acts.shape[0]), 1, 1, 1)[:32], layout)

    def run() -> Any:
        with torch.inference_mode(), autocast(rows.device, precision):
            return tail(rows)

    return run


def interleaved_best(fns: Dict[Any, Callable[[], Any]], reps: int) -> Dict[Any, float]:
    """Best time of each callable over ``reps`` rounds that run them all in turn, after one warm-up round.

    Interleaving puts every callable under the same machine load, so their ratios stay meaningful
    when the load drifts (a shared machine): timing one after the other does not.
    """
    for fn in fns.values():
        fn()
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _SYNC()
            t = time.perf_counter()
            fn()
            _SYNC()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def sess_patches(size: int, num_scales: int = 12, step_ratio: float = 2 / 7) -> int:
    """Windows SESS explains on a square input of ``size`` with its default scales and stride."""
    step = int(round(size * step_ratio))
    total = 0
    for scale in (size + step * i for i in range(num_scales)):
        starts = len(range(0, scale - size, size)) + 1  # the last window is shifted back inside
        total += starts * starts
    return total


# ---------------------------------------------------------------------------------------------- runners
def ours_runner(
    method: str, model: nn.Module, layer: nn.Module, x: torch.Tensor, precision: str = "fp32"
) -> Callable[[], Any]:
    from pytorch_cam import ISCAM, SSCAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM

    targets = [TARGET_CLASS] * x.shape[0]
    cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "eigencam": EigenCAM}
    p = {"precision": precision}
    if method in cls:
        cam = cls[method](model, [layer], **p)
    elif method == "scorecam":
        cam = ScoreCAM(model, [layer], progress=False, **p)
    elif method == "scorecam+cskip16":
        cam = ScoreCAM(model, [layer], cskip=16, progress=False, **p)
    elif method == "sscam+cskip16":
        cam = SSCAM(model, [layer], cskip=16, num_samples=PERTURBATION_SAMPLES, progress=False, **p)
    elif method == "iscam+cskip16":
        cam = ISCAM(model, [layer], cskip=16, num_samples=PERTURBATION_SAMPLES, progress=False, **p)
    elif method == "ablationcam":
        cam = AblationCAM(model, [layer], progress=False, **p)
    elif method in NEW_METHODS:
        from pytorch_cam.methods import METHODS as REGISTRY

        cls = REGISTRY[method]
        kwargs = {"progress": False} if "progress" in inspect.signature(cls.__init__).parameters else {}
        cam = cls(model, new_method_layers(method, model, layer), **kwargs, **p)
    else:
        raise ValueError(method)
    return lambda: cam(x, targets=targets)


def new_method_layers(method: str, model: nn.Module, layer: nn.Module) -> List[nn.Module]:
    """RefineCAM and multi-layer AblationCAM exist to combine layers: give them two, else the usual one."""
    if method == "refinecam":
        return [model.layer3[-1], layer]
    if method == "ablationcam_multilayer":
        return [model.layer4[0], layer]  # both 512 (resnet18) / 2048 (resnet50) channels
    return [layer]


def gradcam_lib_runner(method: str, model: nn.Module, layer: nn.Module, x: torch.Tensor) -> Optional[Callable]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "eigencam": pgc.EigenCAM,
        "scorecam": pgc.ScoreCAM,
        "ablationcam": pgc.AblationCAM,
        # grad-cam 1.5.7's multi-layer AblationCAM raises TypeError on every call: no column for it.
        "shapleycam": pgc.ShapleyCAM,
        "kpcacam": pgc.KPCA_CAM,
        "fem": pgc.FEM,
        "finercam": pgc.FinerCAM,
        "refinecam": pgc.RefineCAM,
        "segeigencam": pgc.SegEigenCAM,
        "sess": pgc.SESS,
    }.get(method)
    if method == "sobelcam":
        from pytorch_grad_cam.sobel_cam import sobel_cam

        rgb = (x[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
        return lambda: [sobel_cam(rgb) for _ in range(x.shape[0])]
    if cls is None:
        return None
    layers = new_method_layers(method, model, layer) if method in NEW_METHODS else [layer]
    cam = cls(model=model, target_layers=layers)
    targets = [ClassifierOutputTarget(TARGET_CLASS)] * x.shape[0]

    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    # pytorch-grad-cam hooks the target layers when the object is built, and its hooks copy every
    # activation to the CPU: left on the model, they would slow every other forward timed beside it
    # (the floors, ours) on a GPU. So they exist only while the peer runs.
    inners = [getattr(cam, "base_cam", None), *getattr(cam, "base_cam_per_layer", [])] + [cam]
    inners = [c for c in inners if c is not None and hasattr(c, "activations_and_grads")]

    def release() -> None:
        for c in inners:
            c.activations_and_grads.release()

    release()

    def run() -> Any:
        import tqdm

        for c in inners:
            c.activations_and_grads = ActivationsAndGradients(
                c.model, c.target_layers, c.reshape_transform, getattr(c, "detach", True)
            )
        try:
            with _quiet_tqdm(tqdm):
                return cam(input_tensor=x, targets=targets)
        finally:
            release()

    run.release = release  # type: ignore[attr-defined]
    return run


def torchcam_runner(method: str, model: nn.Module, layer: nn.Module, x: torch.Tensor) -> Optional[Callable]:
    from torchcam import methods as tc

    cls = {"gradcam": tc.GradCAM, "gradcam++": tc.GradCAMpp, "xgradcam": tc.XGradCAM, "scorecam": tc.ScoreCAM}.get(
        method
    )
    if cls is None:
        return None
    cam = cls(model, target_layer=layer, input_shape=tuple(x.shape[1:]))
    idx = [TARGET_CLASS] * x.shape[0]
    gradient = method != "scorecam"

    def run() -> Any:
        if gradient:
            out = model(x)
        else:
            with torch.inference_mode():
                out = model(x)
        return cam(class_idx=idx, scores=out)

    run.release = cam.remove_hooks  # type: ignore[attr-defined]
    return run


class _quiet_tqdm:
    """grad-cam prints a tqdm bar per image; silence it while timing."""

    def __init__(self, tqdm_module: Any) -> None:
        self.mod = tqdm_module

    def __enter__(self) -> None:
        self.orig = self.mod.tqdm
        self.mod.tqdm = lambda it, *a, **k: it

    def __exit__(self, *exc: Any) -> None:
        self.mod.tqdm = self.orig


# scoring rows and forwards to skip before them, per (library, method), for extrapolation
def rows_and_skip(lib: str, method: str, b: int, c: int, p: int) -> Tuple[int, int]:
    if lib == "ours":
        return p + 1, 1  # the capture forward; then the zero mask (1 row) and the P masked inputs
    if lib == "pytorch-grad-cam":
        return b * c, 1
    return b * c + b, 1  # torchcam: the caller's forward, then its own logits forward and B*C rows


def time_cell(
    lib: str,
    method: str,
    runner: Callable,
    model: nn.Module,
    layer: nn.Module,
    reps: int,
    estimate: bool,
    fraction: float,
    counts: Tuple[int, int, int],
) -> Tuple[float, bool]:
    b, c, p = counts
    # grad-cam's AblationCAM swaps the target layer for its own while it runs; a stopped run must
    # not leave it there.
    parent, name = next((m, n) for m in model.modules() for n, ch in m.named_children() if ch is layer)
    try:
        if method in SLOW and not (lib == "ours" and method == "ablationcam"):
            total, skip = rows_and_skip(lib, method, b, c, p)
            budget = max(int(fraction * total), 96) if estimate else None
            if budget is not None and budget >= total:
                budget = None
            if _SYNC is not _no_sync and budget is None:
                # On a GPU the first call pays cuDNN's per-shape setup and our chunk-size/layout
                # choice, which can outweigh the run itself: time the steady state, like the floors.
                runner()
            return RowBudget(model, total, budget, skip).run(runner)
        return best_time(runner, reps), False
    finally:
        release = getattr(runner, "release", None)
        if release is not None:
            release()
        model.zero_grad(set_to_none=True)  # torchcam's backward leaves .grad on the parameters
        if getattr(parent, name) is not layer:
            setattr(parent, name, layer)


# ---------------------------------------------------------------------------------------------- memory
def _current_rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_rss_kb() -> int:
    # VmHWM belongs to this process image. getrusage's ru_maxrss does not: Linux carries the
    # forked parent's high-water mark across exec, so a child of a benchmark that just ran a
    # 10 GB ScoreCAM would report 10 GB whatever it did itself.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(lib: str, fraction: Optional[float], counts: Tuple[int, int, int]) -> None:
    """Peak RSS growth (MB) of ScoreCAM on resnet50, 8 images of 64x64, over the RSS before the call.

    Nothing runs the model before the call, so the process's peak so far is the model and input.
    """
    model, layer = build_model("resnet50")
    torch.manual_seed(1)
    x = torch.randn(8, 3, 64, 64)
    runner = {"ours": ours_runner, "pytorch-grad-cam": gradcam_lib_runner, "torchcam": torchcam_runner}[lib](
        "scorecam", model, layer, x
    )
    b, c, p = counts
    total, skip = rows_and_skip(lib, "scorecam", b, c, p)
    budget = max(int(fraction * total), 96) if fraction else None
    before = _current_rss_kb()
    seconds, est = RowBudget(model, total, budget, skip).run(runner)
    peak = _peak_rss_kb()
    print(json.dumps({"mb": (peak - before) / 1024, "truncated": est, "seconds": seconds}))


def measure_memory(lib: str, fraction: Optional[float]) -> Dict[str, Any]:
    model, layer = build_model("resnet50")
    torch.manual_seed(1)
    acts = capture(model, layer, torch.randn(8, 3, 64, 64))
    counts = f"{acts.shape[0]},{acts.shape[1]},{int(nonconstant_pairs(acts).sum())}"
    cmd = [sys.executable, "-m", "benchmarks.speed", "--_memory-child", lib, "--_counts", counts]
    if fraction:
        cmd += ["--fraction", str(fraction)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- main
def machine(device: torch.device = CPU) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def fmt(seconds: Optional[float], est: bool = False) -> str:
    if seconds is None:
        return "—"
    s = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    return f"~{s}" if est else s


def ratio(a: Optional[float], b: Optional[float], est: bool = False) -> str:
    if a is None or b is None or b <= 0:
        return "—"
    return f"{'~' if est else ''}{a / b:.2f}×"


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=ALL_METHODS, help="default: the original seven")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument(
        "--devices", nargs="+", default=None, help="devices to time on (default: cpu, plus cuda when available)"
    )
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of the fast methods (best is kept)")
    ap.add_argument("--skip-slow-peers", action="store_true", help="extrapolate the peers' ScoreCAM/AblationCAM")
    ap.add_argument("--estimate-ours", action="store_true", help="extrapolate our ScoreCAM too")
    ap.add_argument("--fraction", type=float, default=0.1, help="fraction of forwards run before extrapolating")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the ScoreCAM peak-memory table")
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=list(PRECISION_ORDER),
        help="print the precision / memory-format table instead (e.g. --precisions fp32 bf16); no memory table",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (1 is steadier on a shared machine)"
    )
    ap.add_argument("--quick", action="store_true", help="= --batches 1 --reps 3 --skip-slow-peers --estimate-ours")
    ap.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_counts", dest="counts", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        counts = tuple(int(v) for v in args.counts.split(","))
        memory_child(args.memory_child, args.fraction if "--fraction" in (argv or sys.argv) else None, counts)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batches, args.reps, args.skip_slow_peers, args.estimate_ours = [1], 3, True, True

    libs: List[Tuple[str, Callable]] = [("ours", ours_runner)]
    if not args.no_peers:
        libs += [("pytorch-grad-cam", gradcam_lib_runner), ("torchcam", torchcam_runner)]

    if args.memory_only:
        print(f"Machine: {machine()}\n", flush=True)
        memory_table(libs, args)
        return
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --devices cuda, but torch sees no CUDA GPU on this machine")
        set_device(device)
        print(f"Machine: {machine(device)}\n", flush=True)
        if args.precisions:
            precision_table(args, device)
        else:
            speed_table(libs, args, device)
        set_device(CPU)
        print()

    if not args.no_memory and not args.precisions:
        print(f"Machine: {machine()}", flush=True)
        memory_table(libs, args)


def speed_table(libs: List[Tuple[str, Callable]], args: argparse.Namespace, device: torch.device) -> None:
    print(
        "| arch | batch | method | ours | pytorch-grad-cam | torchcam | floor | ours/floor "
        "| grad-cam/ours | torchcam/ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for arch in args.archs:
        model, layer = build_model(arch, device)
        shape = (3, args.size, args.size)
        per_img = None
        for b in args.batches:
            torch.manual_seed(1)
            x = torch.randn(b, *shape).to(device)
            acts = capture(model, layer, x)
            c = acts.shape[1]
            nonconst = nonconstant_pairs(acts)
            p = int(nonconst.sum())
            with torch.inference_mode():
                fwd = best_time(lambda m=model, x=x: m(x), args.reps)
            for method in args.methods:
                if method in ("scorecam", "scorecam+cskip16") and per_img is None:
                    per_img = per_image_forward(model, shape)
                if method == "scorecam":
                    floor = p * per_img
                elif method == "scorecam+cskip16":
                    floor = int(nonconst.sum(1).clamp(max=16).sum()) * per_img
                elif method == "ablationcam":
                    from pytorch_cam.utils.fx_split import split_after

                    tail = split_after(model, layer).tail
                    with torch.inference_mode():
                        rows = acts.repeat(math.ceil(32 / b), 1, 1, 1)[:32]
                        ablated = b * c * best_time(lambda f=tail, r=rows: f(r), args.reps) / rows.shape[0]
                    # the one full forward that yields the activations and the unablated scores is
                    # unavoidable too; next to a cheap tail (layer4 -> avgpool -> fc) it dominates
                    floor = fwd + ablated
                elif method == "sess":
                    if per_img is None:
                        per_img = per_image_forward(model, shape)
                    floor = b * sess_patches(args.size) * per_img
                elif method == "ablationcam_multilayer":
                    if per_img is None:
                        per_img = per_image_forward(model, shape)
                    floor = b * c * per_img
                else:
                    floor = fwd
                cells: Dict[str, Tuple[Optional[float], bool]] = {}
                for lib, make in libs:
                    runner = make(method, model, layer, x)
                    if runner is None:
                        cells[lib] = (None, False)
                        continue
                    estimate = args.estimate_ours if lib == "ours" else args.skip_slow_peers
                    cells[lib] = time_cell(
                        lib, method, runner, model, layer, args.reps, estimate, args.fraction, (b, c, p)
                    )
                ours, ours_est = cells["ours"]
                g, g_est = cells.get("pytorch-grad-cam", (None, False))
                t, t_est = cells.get("torchcam", (None, False))
                print(
                    f"| {arch} | {b} | {method} | {fmt(ours, ours_est)} | {fmt(g, g_est)} | {fmt(t, t_est)} "
                    f"| {fmt(floor)} | {ratio(ours, floor, ours_est)} | {ratio(g, ours, g_est or ours_est)} "
                    f"| {ratio(t, ours, t_est or ours_est)} |",
                    flush=True,
                )
    print("\n`~` = extrapolated from a fraction of the forward passes (see the module docstring), not measured.")


PRECISION_ORDER = ("fp32", "bf16", "fp16")
_FLOOR_HEADERS = {"eager": "eager floor", "cl": "CL floor", "bf16cl": "bf16+CL floor", "fp16cl": "fp16+CL floor"}


#: the unit of work each method's floor counts: one forward of the batch, per-image forwards, or both a
#: forward of the batch and rows of the network after the target layer
PER_IMAGE_FLOORS = {"scorecam", "scorecam+cskip16", "sess", "ablationcam_multilayer", *VARIANT_METHODS}


def floor_units(method: str) -> Tuple[str, ...]:
    if method in PER_IMAGE_FLOORS:
        return ("img",)
    if method == "ablationcam":
        return ("fwd", "tail")
    return ("fwd",)


def floor_of(method: str, unit: Dict[str, float], b: int, c: int, pairs: int, cskip_pairs: int, size: int) -> float:
    """The floor of ``method`` (see the module docstring) from the unit times of one floor setting:
    ``unit["fwd"]`` a forward of the batch, ``unit["img"]`` a forward per image, ``unit["tail"]`` a row
    of the network after the target layer."""
    if method == "scorecam":
        return pairs * unit["img"]
    if method == "scorecam+cskip16":
        return cskip_pairs * unit["img"]
    if method in VARIANT_METHODS:
        return PERTURBATION_SAMPLES * cskip_pairs * unit["img"]
    if method == "ablationcam":
        return unit["fwd"] + b * c * unit["tail"]
    if method == "sess":
        return b * sess_patches(size) * unit["img"]
    if method == "ablationcam_multilayer":
        return b * c * unit["img"]
    return unit["fwd"]


def release_peer(runner: Callable, model: nn.Module, layer: nn.Module) -> None:
    """Undo what a peer's run leaves on the model: its hooks, ``.grad``, a swapped target layer."""
    release = getattr(runner, "release", None)
    if release is not None:
        release()
    model.zero_grad(set_to_none=True)
    parent, name = next((m, n) for m in model.modules() for n, ch in m.named_children() if ch is layer)
    if getattr(parent, name) is not layer:
        setattr(parent, name, layer)


def precision_table(args: argparse.Namespace, device: torch.device) -> None:
    """Our time at each of ``args.precisions`` against the eager, channels-last and reduced-precision floors.

    Fast rows time ours (each precision), pytorch-grad-cam and the floors' units interleaved, round
    by round (``interleaved_best``). The long runs (full Score-CAM, the peers' Score-CAM and
    Ablation-CAM) run once each, with the floors' units measured (interleaved) before each of our
    runs and after the last; the row's floor takes the median of those measurements.
    """
    precisions = [q for q in PRECISION_ORDER if q in args.precisions]
    settings = ["eager", "cl", "bf16cl"] + (["fp16cl"] if "fp16" in precisions else [])
    peers = not args.no_peers
    cols = [f"ours {q}" for q in precisions]
    cols += ["grad-cam fp32"] if peers else []
    cols += [_FLOOR_HEADERS[s] for s in settings]
    cols += [f"{q}/eager" for q in precisions]
    cols += ["fp32/CL floor"] if "fp32" in precisions else []
    cols += ["bf16/(bf16+CL floor)"] if "bf16" in precisions else []
    fastest = "bf16" if "bf16" in precisions else precisions[0]
    cols += [f"grad-cam/{fastest}"] if peers else []
    print("| arch | batch | method | " + " | ".join(cols) + " |")
    print("|---" * (3 + len(cols)) + "|", flush=True)
    shape = (3, args.size, args.size)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for arch in args.archs:
        model, layer = build_model(arch, device)
        best_bs = {}
        if any(m in PER_IMAGE_FLOORS for m in args.methods):
            best_bs = {s: fastest_batch_size(model, shape, s, max(2, args.reps)) for s in settings}
            log(f"{arch}: per-image floors at batch sizes {best_bs}")
        for b in args.batches:
            torch.manual_seed(1)
            x = torch.randn(b, *shape).to(device)
            acts = capture(model, layer, x)
            c = acts.shape[1]
            nonconst = nonconstant_pairs(acts)
            pairs, cskip_pairs = int(nonconst.sum()), int(nonconst.sum(1).clamp(max=16).sum())
            counts = (b, c, pairs)
            for method in args.methods:
                units: Dict[Tuple[str, str], Callable[[], Any]] = {}
                scale: Dict[Tuple[str, str], float] = {}
                for s in settings:
                    for u in floor_units(method):
                        if u == "fwd":
                            units[u, s], scale[u, s] = plain_forward(model, x, s), 1.0
                        elif u == "img":
                            xi = torch.randn(best_bs[s], *shape, device=device)
                            units[u, s], scale[u, s] = plain_forward(model, xi, s), 1.0 / best_bs[s]
                        else:
                            units[u, s], scale[u, s] = tail_rows_forward(model, layer, acts, s), 1.0 / 32
                ours = {q: ours_runner(method, model, layer, x, q) for q in precisions}
                peer = gradcam_lib_runner(method, model, layer, x) if peers else None
                slow_ours = method in SLOW and method != "ablationcam"
                slow_peer = method in SLOW
                times: Dict[str, Tuple[Optional[float], bool]] = {}
                unit_runs: List[Dict[Tuple[str, str], float]] = []
                if slow_ours:
                    for q in precisions:
                        unit_runs.append(interleaved_best(units, args.reps))
                        times[q] = time_cell(
                            "ours", method, ours[q], model, layer, args.reps, args.estimate_ours, args.fraction, counts
                        )
                        log(f"  {arch} b{b} {method} {q}: {fmt(*times[q])}")
                    unit_runs.append(interleaved_best(units, args.reps))
                else:
                    fns: Dict[Any, Callable[[], Any]] = {**units, **{("ours", q): ours[q] for q in precisions}}
                    if peer is not None and not slow_peer:
                        fns["peer", ""] = peer
                    best = interleaved_best(fns, args.reps)
                    unit_runs.append({k: best[k] for k in units})
                    times = {q: (best["ours", q], False) for q in precisions}
                    if ("peer", "") in best:
                        times["peer"] = (best["peer", ""], False)
                        release_peer(peer, model, layer)
                    log(f"  {arch} b{b} {method}: " + ", ".join(f"{q} {fmt(*times[q])}" for q in precisions))
                if peer is not None and slow_peer:
                    est = args.skip_slow_peers
                    times["peer"] = time_cell(
                        "pytorch-grad-cam", method, peer, model, layer, args.reps, est, args.fraction, counts
                    )
                elif peer is None:
                    times["peer"] = (None, False)
                if peers:
                    log(f"  {arch} b{b} {method} pytorch-grad-cam: {fmt(*times['peer'])}")
                unit_time = {
                    k: float(np.median([run[k] for run in unit_runs])) * scale[k] for k in units
                }  # the median over the measurement blocks around the runs
                floors = {
                    s: floor_of(
                        method, {u: unit_time[u, s] for u in floor_units(method)}, b, c, pairs, cskip_pairs, args.size
                    )
                    for s in settings
                }
                row = [fmt(*times[q]) for q in precisions]
                row += [fmt(*times["peer"])] if peers else []
                row += [fmt(floors[s]) for s in settings]
                row += [ratio(times[q][0], floors["eager"], times[q][1]) for q in precisions]
                if "fp32" in precisions:
                    row += [ratio(times["fp32"][0], floors["cl"], times["fp32"][1])]
                if "bf16" in precisions:
                    row += [ratio(times["bf16"][0], floors["bf16cl"], times["bf16"][1])]
                if peers:
                    theirs, mine = times["peer"], times[fastest]
                    row += [ratio(theirs[0], mine[0], theirs[1] or mine[1])]
                print(f"| {arch} | {b} | {method} | " + " | ".join(row) + " |", flush=True)
    print(
        "\n`~` = extrapolated from a fraction of the forward passes (see the module docstring), not measured. "
        "Fast rows: ours, the peer and the floors timed interleaved, best of --reps rounds each."
    )


def memory_table(libs: List[Tuple[str, Callable]], args: argparse.Namespace) -> None:
    print("\nScoreCAM peak RSS growth, resnet50 layer4, 8 images of 64×64 (each in its own process):\n")
    print("| library | peak RSS growth | run |")
    print("|---|---|---|")
    for lib, _ in libs:
        estimate = args.estimate_ours if lib == "ours" else args.skip_slow_peers
        fraction = args.fraction if estimate else None
        r = measure_memory(lib, fraction)
        run = "stopped after a fraction of its forwards" if r["truncated"] else "complete"
        print(f"| {lib} | {r['mb']:.0f} MB | {run} ({fmt(r['seconds'], r['truncated'])}) |", flush=True)


if __name__ == "__main__":
    main()
