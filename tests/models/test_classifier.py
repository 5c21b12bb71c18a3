"""Fine-tuning classifier, layer-wise lr decay and the per-group warmup-cosine schedule."""

import json
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from plankton_cli.train.models.classifier import Classifier, group_of, layer_decay_param_groups
from plankton_cli.train.models.schedules import warmup_cosine, warmup_cosine_scheduler

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


# --- a timm CNN encoder (a distillation student) ------------------------------------------------------------------

CNN = "mobilenetv3_small_050"


def test_cnn_classifier_gives_logits_with_and_without_feature_inputs():
    torch.manual_seed(0)
    model = Classifier(CNN, 4, img_size=32, in_chans=1).eval()
    assert not isinstance(model.encoder, VisionTransformer)
    width = model.arch["embed_dim"]
    assert model.forward_features(torch.zeros(2, 1, 32, 32)).shape == (2, width)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert model.head[0].in_features == width
    assert {k: model.arch[k] for k in ("architecture", "img_size", "in_chans", "patch_size", "depth", "num_heads")} \
        == dict(architecture=CNN, img_size=32, in_chans=1, patch_size=None, depth=None, num_heads=None)
    with_features = Classifier(CNN, 4, img_size=32, in_chans=1, feature_dim=6).eval()
    assert with_features.head[0].in_features == width + 6
    assert with_features(torch.randn(3, 1, 32, 32), torch.randn(3, 6)).shape == (3, 4)
    with pytest.raises(ValueError, match="feature inputs"):
        with_features(torch.randn(3, 1, 32, 32))


def test_cnn_refuses_vit_options_and_unknown_names():
    with pytest.raises(ValueError, match="not a timm ViT: --patch-size, --depth apply to ViTs only"):
        Classifier(CNN, 4, img_size=32, patch_size=8, depth=2)
    with pytest.raises(ValueError, match="not a timm model name"):
        Classifier("no_such_net", 4, img_size=32)


def test_cnn_model_file_round_trip_gives_identical_logits_and_no_vit_keys(tmp_path):
    from plankton_cli.train.models.checkpoints import load_model, save_model

    torch.manual_seed(0)
    model = Classifier(CNN, 3, img_size=32, in_chans=1, drop_path_rate=0.0).eval()
    info = {**model.arch, "classes": ["a", "b", "c"], "mean": [0.5], "std": [0.25]}
    weights = save_model(tmp_path / "cnn", model.state_dict(), info)
    written = json.loads(weights.with_suffix(".json").read_text())
    assert all(written.get(key) is None for key in ("patch_size", "depth", "num_heads"))
    assert written["architecture"] == CNN and written["embed_dim"] == model.arch["embed_dim"]
    loaded, loaded_info = load_model(weights)
    assert loaded.arch == model.arch and loaded_info.patch_size is None
    images = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_model_file_of_a_vit_without_its_shape_is_refused(tmp_path):
    from plankton_cli.train.model_info import ModelInfo, ModelInfoError
    from plankton_cli.train.models.checkpoints import ModelFileError, load_model, save_model

    model = tiny_classifier(num_classes=2)
    weights = save_model(tmp_path / "vit", model.state_dict(), {**model.arch, "classes": ["a", "b"], "mean": [0.5],
                                                                "std": [0.25]})
    data = json.loads(weights.with_suffix(".json").read_text())
    with pytest.raises(ModelInfoError, match="lacks required key"):  # a ViT shape is whole or absent
        ModelInfo.from_dict({**data, "depth": None})
    with pytest.raises(ModelInfoError, match="lacks required key"):  # an encoder is always an MAE ViT
        ModelInfo.from_dict({**data, "format": "plankton-cli/encoder", "patch_size": None, "depth": None,
                             "num_heads": None})
    weights.with_suffix(".json").write_text(json.dumps({k: v for k, v in data.items()
                                                        if k not in ("patch_size", "depth", "num_heads")}))
    with pytest.raises(ModelFileError, match="is a ViT: the model file lacks patch_size"):
        load_model(weights)
