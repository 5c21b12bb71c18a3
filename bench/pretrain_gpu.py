"""MAE pretraining throughput on one GPU: end-to-end from the store vs a synthetic-tensor step, same process.

For each model (ViT-B/16, ViT-L/16 at 224, bf16) and each of eager / ``torch.compile``:

- end-to-end: ``StoreDataLoader`` (decode + crop on CPU workers, or ``--gpu-augment``) → Lightning trainer from
  ``plankton_cli.train.training.make_trainer`` → ``MAEPretrainModule``: what ``plankton pretrain`` runs;
- synthetic: the same MAE, AdamW and bf16 autocast on a random tensor already on the GPU (the ceiling);

and prints img/s for both and their ratio (goal ≥ 0.95: the input pipeline keeps up), and the model FLOP
utilisation (MFU) of each: the training FLOPs of one image (counted by ``torch.utils.flop_counter`` on the real
forward + backward, masking included) × img/s, over the H200's dense bf16 peak (989 TFLOP/s) and over a bf16
8192³ matrix product measured in the same run (the ceiling this machine reaches in practice).

    python bench/pretrain_gpu.py --store /tmp/bench-store [--make-store 4096] [--models vit_base_patch16_224]

Eager runs of every model come before the compiled ones, and no new run starts after ``--budget-s`` seconds, so a
short lease still gets the eager figures; each row is written to ``--json`` as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SPEC_BF16_TFLOPS = 989.4  # H100/H200 SXM dense bf16 (NVIDIA data sheet); MFU is quoted against it
DEMO = REPO / "tests" / "data" / "planktonclass-demo" / "demo-images"


def make_store(store: Path, n: int, seed: int = 0) -> None:
    """A store of ``n`` distinct PNG vignettes: random crops, flips and rotations of the bundled demo images."""
    from plankton_cli.ingest import ingest
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.store import Store

    if Store(store).files("objects"):
        return
    rng = np.random.default_rng(seed)
    sources = sorted(p for p in DEMO.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    folder = store.parent / f"{store.name}-images" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.open(sources[i % len(sources)]).convert("L")
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = image.crop((left, top, left + cw, top + ch)).rotate(float(rng.uniform(0, 360)), expand=True)
        image.save(folder / f"{i:06d}.png")
    ingest(Store(store), [folder.parent], options=ReadOptions(instrument="FlowCam", label_from="none"))


def synthetic(model: str, batch: int, compile_model: bool, steps: int, warmup: int) -> float:
    """img/s of MAE training steps on a random bf16-autocast batch that never leaves the GPU."""
    from plankton_cli.train.models import MAE, param_groups_weight_decay

    torch.manual_seed(0)
    mae = MAE(model).cuda()
    forward = torch.compile(mae) if compile_model else mae
    optimizer = torch.optim.AdamW(param_groups_weight_decay(mae, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)
    images = torch.randn(batch, 1, 224, 224, device="cuda")
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def train_flops_per_image(model: str, batch: int = 4) -> float:
    """FLOPs of one MAE training step per image (forward + backward, only the visible patches in the encoder)."""
    from torch.utils.flop_counter import FlopCounterMode

    from plankton_cli.train.models import MAE

    mae = MAE(model).cuda()
    images = torch.randn(batch, 1, 224, 224, device="cuda")
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = mae(images).loss
        loss.backward()
    del mae
    return counter.get_total_flops() / batch


def matmul_tflops(n: int = 8192, repeat: int = 10) -> float:
    """bf16 n×n×n matrix products per second on this GPU, in TFLOP/s: the practical ceiling, measured here."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeat / (time.perf_counter() - start) / 1e12


class _Timer:
    """Times training batches ``warmup + 1 … warmup + steps``: compilation and worker start-up before them, and the
    end-of-fit checkpoint and teardown after them, are not training throughput."""

    def __init__(self, warmup: int, steps: int) -> None:
        from pytorch_lightning.callbacks import Callback

        timer = self

        class _Callback(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                timer.batches += 1
                if timer.batches == warmup:
                    torch.cuda.synchronize()
                    timer.start = time.perf_counter()
                elif warmup < timer.batches <= warmup + steps:
                    timer.samples += batch["image"].shape[0]
                    if timer.batches == warmup + steps:
                        torch.cuda.synchronize()
                        timer.stop = time.perf_counter()

        self.callback = _Callback()
        self.batches, self.samples, self.start, self.stop = 0, 0, 0.0, 0.0

    def rate(self) -> float:
        return self.samples / (self.stop - self.start)


def end_to_end(store: Path, model: str, batch: int, compile_model: bool, steps: int, warmup: int, workers: int,
               gpu_augment: bool, run_dir: Path) -> tuple[float, float, float]:
    """img/s of the real pretraining path, from the store's Parquet files to the optimizer step; then the seconds
    and GB of one checkpoint of it."""
    from plankton_cli.prepare.data import GpuAugment, ResizeTransform, StoreDataLoader, StoreDataset, TrainTransform
    from plankton_cli.prepare.data import load_or_compute_stats
    from plankton_cli.train.models import MAE
    from plankton_cli.train.pretrain import MAEPretrainModule
    from plankton_cli.train.training import make_trainer

    dataset_dir = store / "objects"
    stats = load_or_compute_stats(dataset_dir, resize=256, max_images=1000)
    mean, std = stats["mean"], stats["std"]
    transform = ResizeTransform(256) if gpu_augment else TrainTransform(256, 224, mean, std)
    data = StoreDataset(dataset_dir, transform, shuffle=True, drop_last=True)
    loader = StoreDataLoader(data, batch_size=batch, num_workers=workers, pin_memory=True, persistent_workers=True,
                             prefetch_factor=4, drop_last=True)
    torch.manual_seed(0)
    module = MAEPretrainModule(MAE(model), lr=1e-4, total_steps=10_000, warmup_steps=0, compile=compile_model,
                               gpu_augment=GpuAugment(224, mean, std) if gpu_augment else None)
    timer = _Timer(warmup, steps)
    trainer = make_trainer(run_dir, max_steps=warmup + steps, accelerator="gpu", devices=1, precision="bf16-mixed",
                           callbacks=[timer.callback], enable_progress=False, log_every_n_steps=10_000,
                           checkpoint_every=10_000_000)
    trainer.fit(module, train_dataloaders=loader)
    rate = timer.rate()
    # What one `last.ckpt` costs here (weights + AdamW state): `plankton pretrain` writes one every
    # --checkpoint-every steps and at each epoch end, stopping training meanwhile.
    start = time.perf_counter()
    trainer.save_checkpoint(run_dir / "probe.ckpt")
    seconds = time.perf_counter() - start
    return rate, seconds, (run_dir / "probe.ckpt").stat().st_size / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--make-store", type=int, default=8192, metavar="N",
                        help="images to generate if empty (enough for the timed steps to stay in one epoch)")
    parser.add_argument("--models", nargs="+", default=["vit_base_patch16_224", "vit_large_patch16_224"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--gpu-augment", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="eager only (skip the compiled runs)")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no new run after this")
    parser.add_argument("--json", type=Path, help="also write the results here (after each row)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    began = time.perf_counter()
    make_store(args.store, args.make_store)
    from plankton_cli.store import Store

    rows = sum(stats["rows"] for stats in Store(args.store).stats("objects").values())  # the committed list's
    if (args.warmup + args.steps) * args.batch > rows:
        print(f"note: {rows} images < {args.warmup + args.steps} batches of {args.batch}: the timed steps include an "
              "epoch end (a checkpoint, the loader's restart); --make-store more to time the steady state",
              flush=True)
    peak = matmul_tflops()
    print(f"device: {torch.cuda.get_device_name()}; batch {args.batch}; workers {args.workers}; "
          f"{'GPU' if args.gpu_augment else 'CPU'} augmentation; bf16 8192³ matmul {peak:.0f} TFLOP/s "
          f"(data sheet {SPEC_BF16_TFLOPS:.0f})", flush=True)
    flops = {model: train_flops_per_image(model) for model in args.models}
    results: list[dict] = []
    runs = [(model, False) for model in args.models]
    runs += [] if args.no_compile else [(model, True) for model in args.models]
    for model, compile_model in runs:
        if time.perf_counter() - began > args.budget_s:
            print(f"{model:<24} compile={str(compile_model):<5} skipped: past --budget-s {args.budget_s:.0f}",
                  flush=True)
            continue
        row: dict = {"model": model, "compile": compile_model, "batch": args.batch,
                     "train_gflop_per_img": round(flops[model] / 1e9, 2), "matmul_tflops": round(peak, 1)}
        try:
            synth = synthetic(model, args.batch, compile_model, args.steps, args.warmup)
            e2e, checkpoint_s, checkpoint_gb = end_to_end(args.store, model, args.batch, compile_model, args.steps, args.warmup, args.workers,
                             args.gpu_augment, args.store.parent / f"bench-run-{model}-{compile_model}")
        except Exception as error:  # one failing configuration must not lose the others' figures
            row["error"] = f"{type(error).__name__}: {error}"[:500]
            print(f"{model:<24} compile={str(compile_model):<5} FAILED {row['error']}", flush=True)
        else:
            mfu = {name: rate * flops[model] / 1e12 for name, rate in (("synthetic", synth), ("end_to_end", e2e))}
            row.update({"synthetic_img_s": round(synth, 1), "end_to_end_img_s": round(e2e, 1),
                        "ratio": round(e2e / synth, 3),
                        "mfu_synthetic": round(mfu["synthetic"] / SPEC_BF16_TFLOPS, 3),
                        "mfu_end_to_end": round(mfu["end_to_end"] / SPEC_BF16_TFLOPS, 3),
                        "end_to_end_of_matmul_peak": round(mfu["end_to_end"] / peak, 3),
                        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1),
                        "checkpoint_s": round(checkpoint_s, 2), "checkpoint_gb": round(checkpoint_gb, 2),
                        "checkpoint_in_steps": round(checkpoint_s * e2e / args.batch, 1)})
            print(f"{model:<24} compile={str(compile_model):<5} synthetic {synth:8.1f} img/s   "
                  f"end-to-end {e2e:8.1f} img/s   ratio {e2e / synth:.3f}   "
                  f"MFU {row['mfu_synthetic']:.1%} / {row['mfu_end_to_end']:.1%}   "
                  f"({row['train_gflop_per_img']} GFLOP/img, peak {row['peak_mem_gb']} GB)   "
                  f"checkpoint {checkpoint_gb:.2f} GB in {checkpoint_s:.1f} s = {row['checkpoint_in_steps']} steps",
                  flush=True)
        results.append(row)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
