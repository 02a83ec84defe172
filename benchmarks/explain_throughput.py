"""Throughput of ``explain_dataset`` (Grad-CAM over an image folder) against plain batched inference.

    python -m benchmarks.explain_throughput                   # 2,000 JPEGs, resnet18, 1 and 2 processes
    python -m benchmarks.explain_throughput --images 4000 --arch resnet50 --procs 1 2 4 --device cuda

Writes ``--images`` random-ish photos (smooth colour fields plus noise, 256 x 256 JPEGs by default)
into a temporary folder, then for each process count N measures, end to end, with N processes
launched by torchrun (N = 1 runs without it):

- **inference**: the same DataLoader as explain_dataset (ImageFiles items, the same workers, batch
  size and shard-aligned batches), each batch normalised on the device and run through the model
  once under ``torch.inference_mode`` (forward only, outputs discarded);
- **explain_dataset**: Grad-CAM maps of every image's top class, written to shard files by the
  background writer, from the first setup step to the manifest.

Both are wall time between two barriers around the whole run (so explain_dataset's setup,
fingerprinting and summary count against it). The two kinds alternate within one launch (a
machine whose load changes affects both alike) and the best of ``--reps`` runs counts. Prints a
markdown table with the ratio explain / inference, and the CPU time per image of each (all
processes and their DataLoader workers; the ratio that a CPU-bound run converges to, and one that
other programs on a shared machine disturb much less than wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` JPEGs of ``size`` x ``size``: blurred colour blobs plus noise (decode cost of real photos)."""
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.random((8, 8, 3)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img * 255 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        sub = folder / f"{i % 10}"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers, once joined)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _worker(args: argparse.Namespace) -> None:
    """One process of a measurement (launched directly or by torchrun)."""
    import torch
    import torch.distributed as dist
    import torchvision
    from torch.utils.data import DataLoader

    from pytorch_cam import GradCAM
    from pytorch_cam.explain import ImageFiles, collate_items, explain_dataset, init_distributed
    from pytorch_cam.utils.image import IMAGENET_MEAN, IMAGENET_STD

    device = torch.device(args.device)
    d = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.arch, weights=None).to(device).eval()

    def barrier() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        if d.world_size > 1:
            dist.barrier()

    def run_inference() -> None:
        items = ImageFiles(args.dir, args.input_size)
        n = len(items)
        shards = range((n + args.shard_size - 1) // args.shard_size)
        batches = []
        for j in list(shards)[d.rank :: d.world_size]:
            lo, hi = j * args.shard_size, min(n, (j + 1) * args.shard_size)
            batches += [list(range(b, min(hi, b + args.batch_size))) for b in range(lo, hi, args.batch_size)]
        workers = args.num_workers
        if workers is None:  # explain_dataset's default
            workers = max(1, min(4, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        loader = DataLoader(
            items,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=collate_items,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        mean = torch.tensor(IMAGENET_MEAN, device=device).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).reshape(1, 3, 1, 1)
        with torch.inference_mode():
            for batch in loader:
                x = batch["image"].to(device, non_blocking=True)
                model((x.float().div_(255.0) - mean) / std)

    def run_explain(rep: int) -> None:
        out = Path(args.out) / f"rep{rep}"
        with GradCAM(model, [model.layer4[-1]] if hasattr(model, "layer4") else None) as cam:
            explain_dataset(
                cam,
                args.dir,
                out,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                input_size=args.input_size,
                shard_size=args.shard_size,
                progress=False,
            )

    # The two alternate, so that a machine whose load changes over time affects both alike.
    times: Dict[str, List[float]] = {"inference": [], "explain": [], "inference_cpu": [], "explain_cpu": []}
    for rep in range(args.reps):
        for what in ("inference", "explain"):
            barrier()
            start, cpu = time.perf_counter(), _cpu_seconds()
            run_inference() if what == "inference" else run_explain(rep)
            barrier()
            times[what].append(time.perf_counter() - start)
            cpu_used = torch.tensor([_cpu_seconds() - cpu], dtype=torch.float64)
            if d.world_size > 1:
                dist.all_reduce(cpu_used)  # every process's CPU time, its DataLoader workers' included
            times[f"{what}_cpu"].append(float(cpu_used))
    if d.rank == 0:
        Path(args.result).write_text(json.dumps(times))
    if d.created:
        dist.destroy_process_group()


def measure(args: argparse.Namespace, procs: int, folder: Path, work: Path) -> Dict[str, float]:
    """Best seconds of each kind with ``procs`` processes."""
    result = work / f"result-{procs}.json"
    out = work / f"out-{procs}"
    shutil.rmtree(out, ignore_errors=True)
    worker = [
        str(Path(__file__).resolve()),
        "--worker",
        "--dir",
        str(folder),
        "--out",
        str(out),
        "--result",
        str(result),
        "--arch",
        args.arch,
        "--input-size",
        str(args.input_size),
        "--batch-size",
        str(args.batch_size),
        "--shard-size",
        str(args.shard_size),
        "--reps",
        str(args.reps),
        "--device",
        args.device,
    ]
    if args.num_workers is not None:
        worker += ["--num-workers", str(args.num_workers)]
    if procs == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *worker]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = list(out.glob("rep0/shards/*.npz"))
    with np.load(shards[0]) as z:
        raw = z["maps"][0].nbytes
    n = sum(1 for _ in folder.rglob("*.jpg"))
    disk = sum(f.stat().st_size for f in shards) / n
    print(f"  maps: {raw} bytes each (uint8), {disk:.0f} bytes each on disk (compressed shards, all fields)")
    shutil.rmtree(out, ignore_errors=True)
    times = json.loads(result.read_text())
    print(f"  {procs} process(es), seconds per run: {times}")
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per process (default: auto)")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=2, help="runs of each kind (alternating); the best counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dir", default=None, help="an existing image folder (default: generate one)")
    # internal: one measuring process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return

    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        work = Path(tmp)
        folder = Path(args.dir) if args.dir else work / "images"
        if not args.dir:
            t = time.perf_counter()
            make_images(folder, args.images, args.size)
            print(f"generated {args.images} {args.size}x{args.size} JPEGs in {time.perf_counter() - t:.0f} s")
        n = sum(1 for _ in folder.rglob("*.jpg"))
        rows: List[Dict[str, Any]] = []
        for procs in args.procs:
            best = measure(args, procs, folder, work)
            infer, explain = best["inference"], best["explain"]
            rows.append(
                {
                    "procs": procs,
                    "inference": n / infer,
                    "explain": n / explain,
                    "inference_cpu": 1000 * best["inference_cpu"] / n,
                    "explain_cpu": 1000 * best["explain_cpu"] / n,
                }
            )
            print(f"  {procs} process(es): inference {n / infer:.1f} images/s, explain {n / explain:.1f} images/s")
    print()
    print(
        f"{n} images ({args.size}x{args.size} JPEG) -> {args.arch} at {args.input_size}x{args.input_size}, "
        f"batch {args.batch_size}, {args.device} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores)"
    )
    print()
    print(
        "| processes | plain inference (images/s) | explain_dataset GradCAM (images/s) | ratio "
        "| CPU ms/image, inference | CPU ms/image, explain | CPU ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['procs']} | {r['inference']:.1f} | {r['explain']:.1f} | {r['explain'] / r['inference']:.2f} "
            f"| {r['inference_cpu']:.0f} | {r['explain_cpu']:.0f} | {r['inference_cpu'] / r['explain_cpu']:.2f} |"
        )


if __name__ == "__main__":
    main()
