"""`plankton pretrain` on real UVP6 vignettes with a tiny ViT: export, overfitting, --init, kill and --resume."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from plankton_cli.ingest import ingest
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from conftest import load_bench, plankton, shared_data

# The smallest model that is still a real ViT + MAE (img 32, patch 8: 16 patches, 4 kept).
TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8", "--depth", "2",
        "--embed-dim", "64", "--num-heads", "2", "--decoder-depth", "1", "--decoder-dim", "32",
        "--decoder-heads", "2", "--workers", "0", "--warmup-epochs", "0", "--log-every", "1"]
TINY_ARCH = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
CLASSES = ("Acantharea__1111", "Aulacanthidae__2222")  # 100 + 100 vignettes, one ingest (file) each


def make_store(root: Path) -> Path:
    """A store of 200 real UVP6 vignettes in two files (two row groups: enough for two DDP ranks)."""
    uvp6 = shared_data("images", "uvp6-vignettes")
    for name in CLASSES:
        ingest(Store(root), [uvp6 / name], options=ReadOptions(instrument="UVP6"))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store")


def test_tiny_pretrain_exports_an_encoder_that_timm_loads(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = plankton("pretrain", "--store", str(store), *TINY, "--batch-size", "16", "--effective-batch", "32",
                    "--max-steps", "3", "--out", str(run), "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary["global_step"] == 3
    assert summary["dataset"] == "objects"  # no padded dataset in this store
    assert summary["effective_batch"] == 32 and summary["lr"] == pytest.approx(1.5e-4 * 32 / 256)

    info = json.loads((run / "encoder.json").read_text())
    assert info["format"] == "plankton-cli/encoder" and info["in_chans"] == 1
    assert info["source_store"] == str(store) and info["source_dataset"] == "objects"
    assert 0 < info["mean"][0] < 1 and 0 < info["std"][0] < 1  # per channel
    model = timm.create_model(info["architecture"], pretrained=False, in_chans=1, num_classes=0,
                              **{k: info[k] for k in TINY_ARCH})
    model.load_state_dict(load_file(run / "encoder.safetensors"), strict=True)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 64)

    config = json.loads((run / "config.json").read_text())
    assert config["accumulate"] == 2 and config["total_steps"] == 3
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert list((run / "reconstructions").glob("epoch-*.png"))
    steps = [line.split(",")[1] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps  # one row per logged step

    again = plankton("pretrain", "--store", str(store), *TINY, "--max-steps", "1", "--out", str(run))
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrite a run silently
    cnn = plankton("pretrain", "--store", str(store), "--model", "mobilenetv3_small_050", "--out", str(tmp_path / "c"))
    assert cnn.returncode == 2 and cnn.stderr.strip().splitlines() == [
        "Error: mobilenetv3_small_050 is not a timm ViT: MAE pretraining takes ViTs only (a timm CNN can be a "
        "`plankton distill --student`)"]


def test_loss_falls_when_overfitting_a_fixed_batch(store: Path) -> None:
    from plankton_cli.train.models import MAE
    from plankton_cli.train.pretrain import MAEPretrainModule, fixed_batch

    torch.manual_seed(0)
    images = fixed_batch(store / "objects", img_size=32, resize=37, mean=0.02, std=0.07, n=8)
    mae = MAE("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2,
              decoder_depth=1, decoder_dim=32, decoder_heads=2)
    module = MAEPretrainModule(mae, lr=1e-3, total_steps=40, warmup_steps=0)
    optimizer = module.configure_optimizers()["optimizer"]
    idx_keep, idx_mask = mae.random_mask(len(images))

    def loss() -> float:
        with torch.no_grad():
            return float(mae(images, idx_keep, idx_mask).loss)

    before = loss()
    for _ in range(40):
        optimizer.zero_grad()
        mae(images).loss.backward()
        optimizer.step()
    assert loss() < 0.7 * before


def test_init_from_an_rgb_timm_checkpoint_of_another_size(store: Path, tmp_path: Path) -> None:
    from plankton_cli.train.pretrain import PretrainConfig, pretrain

    rgb = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, in_chans=3,
                            img_size=48, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    checkpoint = tmp_path / "timm-rgb.pth"
    torch.save({"model": rgb.state_dict()}, checkpoint)  # the usual train-script wrapper

    run = tmp_path / "run"
    summary = pretrain(PretrainConfig(
        store=store, out=run, model="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64,
        num_heads=2, decoder_depth=1, decoder_dim=32, decoder_heads=2, batch_size=8, effective_batch=8,
        base_lr=1e-6, warmup_epochs=0, max_steps=1, workers=0, init=checkpoint,
    ), enable_progress=False)
    assert summary["global_step"] == 1
    exported = load_file(run / "encoder.safetensors")
    source = rgb.state_dict()
    # One step at lr ~3e-8 leaves the weights where --init put them: summed RGB kernels, same blocks.
    torch.testing.assert_close(exported["patch_embed.proj.weight"],
                               source["patch_embed.proj.weight"].sum(dim=1, keepdim=True), atol=1e-4, rtol=0)
    torch.testing.assert_close(exported["blocks.1.mlp.fc2.weight"], source["blocks.1.mlp.fc2.weight"],
                               atol=1e-4, rtol=0)
    assert exported["pos_embed"].shape == (1, 1 + 16, 64)  # resampled from 6x6 to 4x4 patches
    assert json.loads((run / "encoder.json").read_text())["init"] == str(checkpoint)


def test_extra_callbacks_see_the_encoder_at_each_epoch(store: Path, tmp_path: Path) -> None:
    """``pretrain(callbacks=...)``: a callback can snapshot the encoder before training and at each epoch end
    (what bench/mae_scale.py does); the last snapshot is the exported encoder."""
    from pytorch_lightning.callbacks import Callback

    from plankton_cli.train.pretrain import PretrainConfig, pretrain

    class Snapshots(Callback):
        def __init__(self) -> None:
            self.states: dict[int, dict[str, torch.Tensor]] = {}

        def on_train_start(self, trainer, pl_module) -> None:
            self.states[0] = pl_module.mae.encoder_state_dict()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.states[trainer.current_epoch + 1] = pl_module.mae.encoder_state_dict()

    snapshots = Snapshots()
    run = tmp_path / "run"
    summary = pretrain(PretrainConfig(
        store=store, out=run, **TINY_ARCH, model="vit_tiny_patch16_224", decoder_depth=1, decoder_dim=32,
        decoder_heads=2, batch_size=32, effective_batch=32, warmup_epochs=0, epochs=2, workers=0, recon_every=0,
    ), enable_progress=False, callbacks=[snapshots])
    assert summary["epochs"] == 2 and sorted(snapshots.states) == [0, 1, 2]
    exported = load_file(run / "encoder.safetensors")
    for name, value in exported.items():
        torch.testing.assert_close(snapshots.states[2][name], value)
    assert not torch.equal(snapshots.states[0]["blocks.0.attn.qkv.weight"], exported["blocks.0.attn.qkv.weight"])
    assert json.loads((run / "config.json").read_text())["epochs"] == 2  # callbacks are not settings


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def test_killed_run_resumes_to_the_same_step_count(store: Path, tmp_path: Path) -> None:
    # 200 images, batch 32: 7 optimizer steps per epoch, 14 in two epochs.
    args = ["--store", str(store), *TINY, "--batch-size", "32", "--effective-batch", "32", "--epochs", "2",
            "--checkpoint-every", "2", "--recon-every", "1"]
    whole = json.loads(plankton("pretrain", *args, "--out", str(tmp_path / "whole"), "--json", check=True).stdout)
    assert whole["global_step"] == 14

    run = tmp_path / "killed"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "plankton_cli", "pretrain", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 90
        while not (ckpt.exists() and _checkpoint_step(ckpt) >= 4) and proc.poll() is None:
            assert time.monotonic() < deadline, "no step checkpoint within 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = _checkpoint_step(ckpt)
    assert 0 < killed_at < 14, "the run must be killed mid-way"
    assert not (run / "summary.json").exists()

    resumed = json.loads(plankton("pretrain", *args, "--out", str(run), "--resume", "--json", check=True).stdout)
    assert resumed["resumed_from"] == str(ckpt)
    assert resumed["global_step"] == whole["global_step"] == 14
    assert resumed["epochs"] == 2
    # Rows the killed run logged after its checkpoint were dropped on resume: each step is logged once.
    with (run / "metrics.csv").open(newline="") as f:
        step_rows = [int(row["step"]) for row in csv.DictReader(f) if row["train/lr"]]
    assert sorted(step_rows) == sorted(set(step_rows))
    assert len(step_rows) == 14


@pytest.mark.gpu
def test_gpu_pretrain_bf16_with_gpu_augment_and_compile(tmp_path: Path) -> None:
    """Runs on a GPU machine only (scripts/gpu-check.sh): bf16 autocast, on-device augmentation, torch.compile."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    bench = load_bench("pretrain_gpu")
    store = tmp_path / "store"
    bench.make_store(store, 256)  # distinct vignettes made from the bundled Apache-2.0 demo images
    run = tmp_path / "run"
    summary = json.loads(plankton(
        "pretrain", "--store", str(store), *TINY, "--workers", "4", "--batch-size", "64",
        "--effective-batch", "128", "--max-steps", "6", "--gpu-augment", "--compile", "--accelerator", "gpu",
        "--out", str(run), "--json", check=True).stdout)
    config = json.loads((run / "config.json").read_text())
    assert config["precision"] == "bf16-mixed" and config["accumulate"] == 2
    assert summary["global_step"] == 6 and math.isfinite(summary["final_loss"])
    assert "_orig_mod" not in "".join(load_file(run / "encoder.safetensors"))  # compiled wrapper not exported
