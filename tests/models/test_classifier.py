"""Fine-tuning classifier, layer-wise lr decay and the per-group warmup-cosine schedule."""

import math

import pytest
import torch
from torch import nn

from plankton_cli.models.classifier import Classifier, group_of, layer_decay_param_groups
from plankton_cli.models.schedules import warmup_cosine, warmup_cosine_scheduler

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)


def tiny_classifier(num_classes: int = 5, **overrides) -> Classifier:
    return Classifier("vit_base_patch16_224", num_classes, **{**TINY, **overrides})


def test_mae_style_pooling_and_bottleneck_head():
    model = tiny_classifier(num_classes=5)
    assert isinstance(model.encoder.norm, nn.Identity) and isinstance(model.encoder.fc_norm, nn.LayerNorm)
    assert model.encoder.global_pool == "avg"
    assert [type(m) for m in model.head] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert model.head[0].out_features == 512 and model.head[3].out_features == 5
    assert model.head[3].weight.std() < 1e-4  # trunc-normal std 2e-5, as MAE's head
    assert model.encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    logits = model(torch.randn(3, 1, 32, 32))
    assert logits.shape == (3, 5)
    assert model.arch == dict(
        architecture="vit_base_patch16_224", img_size=32, in_chans=1, patch_size=8,
        embed_dim=64, depth=2, num_heads=2, num_classes=5, head="finetune", hidden_dim=512,
    )


def test_refuses_pretrained_download():
    with pytest.raises(ValueError, match="never downloads"):
        tiny_classifier(pretrained=True)


def test_layer_scales_and_weight_decay_groups():
    model = tiny_classifier()
    groups = layer_decay_param_groups(model, base_lr=1e-3, weight_decay=0.01, layer_decay=0.75)
    by_name = {name: g for g in groups for name in g["param_names"]}
    assert len(by_name) == sum(1 for _ in model.parameters())  # every parameter, exactly once
    depth = 2
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75 ** (depth + 1))
    assert by_name["encoder.cls_token"]["layer_id"] == 0 and by_name["encoder.pos_embed"]["layer_id"] == 0
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["layer_id"] == 1
    assert by_name["encoder.blocks.1.mlp.fc2.weight"]["lr_scale"] == pytest.approx(0.75)
    assert by_name["encoder.fc_norm.weight"]["lr_scale"] == 1.0 and by_name["head.3.weight"]["lr_scale"] == 1.0
    for name, group in by_name.items():
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
        no_decay = name.endswith((".bias", "pos_embed", "cls_token")) or "norm" in name or name.startswith("head.1.")
        assert group["weight_decay"] == (0.0 if no_decay else 0.01), name


def test_layer_decay_survives_adamw_and_lambdalr_at_every_step():
    torch.manual_seed(0)
    depth = 3
    model = tiny_classifier(depth=depth)
    base_lr, total, warmup = 2e-3, 12, 3
    optimizer = torch.optim.AdamW(layer_decay_param_groups(model, base_lr, layer_decay=0.75))
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=total, warmup_steps=warmup)
    block0 = group_of(optimizer, model.encoder.blocks[0].attn.qkv.weight)
    patch = group_of(optimizer, model.encoder.patch_embed.proj.weight)
    head = group_of(optimizer, model.head[3].weight)
    images, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    for step in range(total):
        factor = warmup_cosine(step, total, warmup)
        assert head["lr"] == pytest.approx(base_lr * factor)
        if step > 0:  # step 0 of the warmup has lr 0 everywhere
            assert block0["lr"] / head["lr"] == pytest.approx(0.75**depth)
            assert patch["lr"] / head["lr"] == pytest.approx(0.75 ** (depth + 1))
        loss = nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_warmup_cosine_shape():
    assert warmup_cosine(0, 100, 10) == 0.0
    assert warmup_cosine(5, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(150, 100, 10) == pytest.approx(0.0, abs=1e-12)  # stays at the floor
    assert warmup_cosine(100, 100, 10, min_factor=0.01) == pytest.approx(0.01)
    values = [warmup_cosine(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert not math.isnan(warmup_cosine(0, 1, 0))


def test_scheduler_refuses_lr_scale_that_was_not_applied():
    model = tiny_classifier()
    groups = layer_decay_param_groups(model, base_lr=1e-3)
    for group in groups:
        group["lr"] = 1e-3  # what timm's param_groups_layer_decay leaves: lr_scale only
    optimizer = torch.optim.AdamW(groups)
    with pytest.raises(ValueError, match="lr_scale"):
        warmup_cosine_scheduler(optimizer, total_steps=10, warmup_steps=2)
