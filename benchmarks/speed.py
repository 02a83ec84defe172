"""Speed (and ScoreCAM memory) of pytorch_cam against pytorch-grad-cam and torchcam, on this machine.

    python -m benchmarks.speed                      # everything (slow: peers' ScoreCAM runs for minutes)
    python -m benchmarks.speed --quick              # batch 1, slow runs extrapolated: a few minutes
    python -m benchmarks.speed --archs resnet18 --batches 1 8 --methods gradcam scorecam --skip-slow-peers

Prints a markdown table. Every time is the best of ``--reps`` runs after a warm-up, except the
gradient-free methods' slow runs, which run once. A cell marked ``~`` was extrapolated, not
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
ALL_METHODS = METHODS + NEW_METHODS
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
        if self.calls <= self.skip:
            return
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


def sess_patches(size: int, num_scales: int = 12, step_ratio: float = 2 / 7) -> int:
    """Windows SESS explains on a square input of ``size`` with its default scales and stride."""
    step = int(round(size * step_ratio))
    total = 0
    for scale in (size + step * i for i in range(num_scales)):
        starts = len(range(0, scale - size, size)) + 1  # the last window is shifted back inside
        total += starts * starts
    return total


# ---------------------------------------------------------------------------------------------- runners
def ours_runner(method: str, model: nn.Module, layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    from pytorch_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM

    targets = [TARGET_CLASS] * x.shape[0]
    cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "eigencam": EigenCAM}
    if method in cls:
        cam = cls[method](model, [layer])
    elif method == "scorecam":
        cam = ScoreCAM(model, [layer], progress=False)
    elif method == "scorecam+cskip16":
        cam = ScoreCAM(model, [layer], cskip=16, progress=False)
    elif method == "ablationcam":
        cam = AblationCAM(model, [layer], progress=False)
    elif method in NEW_METHODS:
        from pytorch_cam.methods import METHODS as REGISTRY

        cls = REGISTRY[method]
        kwargs = {"progress": False} if "progress" in inspect.signature(cls.__init__).parameters else {}
        cam = cls(model, new_method_layers(method, model, layer), **kwargs)
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

    def run() -> Any:
        import tqdm

        with _quiet_tqdm(tqdm):
            return cam(input_tensor=x, targets=targets)

    inner = getattr(cam, "base_cam", None) or getattr(cam, "base_cam_per_layer", [None])[0] or cam
    run.release = inner.activations_and_grads.release  # type: ignore[attr-defined]
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
    ap.add_argument("--quick", action="store_true", help="= --batches 1 --reps 3 --skip-slow-peers --estimate-ours")
    ap.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_counts", dest="counts", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        counts = tuple(int(v) for v in args.counts.split(","))
        memory_child(args.memory_child, args.fraction if "--fraction" in (argv or sys.argv) else None, counts)
        return
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
        speed_table(libs, args, device)
        set_device(CPU)
        print()

    if not args.no_memory:
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
