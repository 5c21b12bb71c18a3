"""Train/eval transforms and the GPU-side augmentation, on real vignettes (run on CPU here)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from plankton_cli.prepare.data import EvalTransform, GpuAugment, ResizeTransform, TrainTransform, decode_gray
from plankton_cli.prepare.data.transforms import torchvision_train_transform
import conftest

REPO = Path(__file__).resolve().parents[2]
UVP6 = conftest.SHARED / "images" / "uvp6-vignettes"
DEMO = REPO / "tests" / "data" / "planktonclass-demo"  # Apache-2.0, shipped: JPEG, mostly RGB


def shared_data() -> Path:
    return conftest.shared_data("images", "uvp6-vignettes")


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    return [p.read_bytes() for p in sorted(shared_data().glob("*/*.png"))[::20]]


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    files = sorted(DEMO.rglob("*.jp*g"))
    if not files:
        pytest.skip(f"no JPEG under {DEMO}")
    return files[0].read_bytes()


def asymmetric_png() -> bytes:
    """A 40×30 image whose flips are all different: a bright top-left corner on a ramp."""
    pixels = np.tile(np.arange(40, dtype=np.uint8) * 3, (30, 1))
    pixels[:8, :8] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_shapes_and_dtypes(pngs, jpeg):
    for data in (pngs[0], jpeg):
        train = TrainTransform(resize=64, crop=48, mean=0.2, std=0.1)(data)
        evaluated = EvalTransform(resize=64, crop=48)(data)
        resized = ResizeTransform(40)(data)
        assert train.shape == evaluated.shape == (1, 48, 48)
        assert train.dtype == evaluated.dtype == torch.float32
        assert resized.shape == (1, 40, 40) and resized.dtype == torch.uint8
    assert decode_gray(jpeg, size_hint=32).mode == "L"


def test_eval_is_deterministic_and_matches_torchvision(pngs):
    transform = EvalTransform(resize=64, crop=48, mean=0.0, std=1.0)
    reference = v2.Compose(
        [
            v2.Resize((64, 64)),
            v2.Grayscale(),
            v2.CenterCrop(48),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    for data in pngs[:10]:
        out = transform(data)
        assert torch.equal(out, transform(data))
        # One fused resample instead of resize-then-crop: close, not bit-identical.
        expected = reference(Image.open(io.BytesIO(data)))
        assert (out - expected).abs().mean() < 0.02


def test_train_crops_and_flips_vary():
    data = asymmetric_png()
    full_frame = TrainTransform(resize=32, crop=32, mean=0.0, std=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    unflipped = EvalTransform(resize=32, crop=32, mean=0.0, std=1.0)(data)
    variants = {
        "none": unflipped,
        "h": unflipped.flip(-1),
        "v": unflipped.flip(-2),
        "hv": unflipped.flip(-1).flip(-2),
    }
    seen = set()
    random.seed(0)  # TrainTransform draws with `random`, which DataLoader seeds per worker
    for _ in range(40):
        out = full_frame(data)
        matches = [name for name, v in variants.items() if torch.allclose(out, v, atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(variants)

    cropping = TrainTransform(resize=32, crop=24)
    outputs = torch.stack([cropping(data) for _ in range(8)])
    assert len({o.numpy().tobytes() for o in outputs}) == 8


def test_train_statistics_match_torchvision_pipeline(pngs):
    ours = TrainTransform(resize=64, crop=48, mean=0.0, std=1.0)
    theirs = torchvision_train_transform(64, 48, mean=0.0, std=1.0)
    random.seed(1)
    torch.manual_seed(1)
    a = torch.stack([ours(d) for d in pngs])
    b = torch.stack([theirs(Image.open(io.BytesIO(d))) for d in pngs])
    assert a.mean() == pytest.approx(b.mean().item(), abs=0.01)
    assert a.std() == pytest.approx(b.std().item(), rel=0.1)


def test_gpu_augment_draws_per_sample_crops_and_flips():
    augment = GpuAugment(crop=24, mean=0.0, std=1.0)
    image = ResizeTransform(32)(asymmetric_png())
    batch = image.expand(16, -1, -1, -1).contiguous()
    generator = torch.Generator().manual_seed(0)
    out = augment(batch, generator=generator)
    assert out.shape == (16, 1, 24, 24) and out.dtype == torch.float32
    assert len({o.numpy().tobytes() for o in out}) == 16  # same input, 16 different crops

    boxes = augment.crop_boxes(1000, 32, 32, torch.device("cpu"), torch.Generator().manual_seed(1))
    top, left, h, w = boxes.unbind(1)
    area = h * w / (32 * 32)
    assert ((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32)).all()
    assert area.min() >= 0.35 and area.max() <= 1.0 and area.std() > 0.1

    # With a full-frame crop only flips remain: all four occur, each an exact flip of the input.
    flips_only = GpuAugment(crop=32, mean=0.0, std=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    reference = batch[0].float() / 255
    out = flips_only(image.expand(64, -1, -1, -1), generator=torch.Generator().manual_seed(2))
    kinds = set()
    for o in out:
        for name, variant in {"none": reference, "h": reference.flip(-1), "v": reference.flip(-2),
                              "hv": reference.flip(-1).flip(-2)}.items():
            if torch.allclose(o, variant, atol=1e-4):
                kinds.add(name)
    assert kinds == {"none", "h", "v", "hv"}


def test_gpu_augment_matches_cpu_statistics(pngs):
    cpu = TrainTransform(resize=64, crop=48, mean=0.0, std=1.0)
    gpu = GpuAugment(crop=48, mean=0.0, std=1.0)
    random.seed(3)
    a = torch.stack([cpu(d) for d in pngs])
    b = gpu(torch.stack([ResizeTransform(64)(d) for d in pngs]), generator=torch.Generator().manual_seed(3))
    assert a.mean() == pytest.approx(b.mean().item(), abs=0.01)
    assert a.std() == pytest.approx(b.std().item(), rel=0.1)
