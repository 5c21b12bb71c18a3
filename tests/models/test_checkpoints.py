"""Safe export/load of encoders and classifiers, and adaptation of foreign ViT checkpoints."""

import argparse
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from plankton_cli.train.models.checkpoints import (
    load_encoder_info,
    load_model,
    load_vit_weights,
    save_encoder,
    save_model,
)
from plankton_cli.train.models.classifier import Classifier
from plankton_cli.train.models.mae import MAE, create_vit

VIT = dict(patch_size=8, depth=2, embed_dim=64, num_heads=2)
PREPROCESS = dict(mean=[0.12], std=[0.2], pad_mode="edge-mode-noise", resize=36, source="test run")


def tiny_mae() -> MAE:
    return MAE("vit_base_patch16_224", img_size=32, decoder_depth=1, decoder_dim=32, decoder_heads=2, **VIT)


def tiny_classifier(num_classes: int = 3) -> Classifier:
    return Classifier("vit_base_patch16_224", num_classes, img_size=32, **VIT)


def rgb_timm_vit(img_size: int, patch_size: int = 8, num_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(
        "vit_base_patch16_224", img_size=img_size, in_chans=3, num_classes=num_classes,
        patch_size=patch_size, depth=2, embed_dim=64, num_heads=2,
    )


def test_exported_encoder_loads_strictly_into_plain_timm(tmp_path):
    mae = tiny_mae()
    weights = save_encoder(tmp_path / "run", mae.encoder_state_dict(), {**mae.encoder_arch, **PREPROCESS})
    assert weights == tmp_path / "run" / "encoder.safetensors"
    assert sorted(p.name for p in weights.parent.iterdir()) == ["encoder.json", "encoder.safetensors"]  # no temp files

    info = load_encoder_info(weights.parent)
    assert info["format"] == "plankton-cli/encoder" and info["format_version"] == 1
    assert info["pad_mode"] == "edge-mode-noise" and info["std"] == [0.2] and info["depth"] == 2
    assert all(not isinstance(v, dict) for v in info.values())  # flat
    weights.with_suffix(".json").unlink()
    assert load_encoder_info(weights) == info  # the safetensors header carries the same info

    plain = timm.create_model(
        info["architecture"], in_chans=info["in_chans"], img_size=info["img_size"], num_classes=0,
        patch_size=info["patch_size"], depth=info["depth"], embed_dim=info["embed_dim"], num_heads=info["num_heads"],
    )
    from safetensors.torch import load_file

    plain.load_state_dict(load_file(weights), strict=True)


def test_save_encoder_refuses_incomplete_or_nested_info(tmp_path):
    mae = tiny_mae()
    with pytest.raises(ValueError, match="mean"):
        save_encoder(tmp_path, mae.encoder_state_dict(), mae.encoder_arch)
    with pytest.raises(ValueError, match="flat"):
        save_encoder(tmp_path, mae.encoder_state_dict(), {**mae.encoder_arch, **PREPROCESS, "pad": {"mode": "x"}})
    assert not any(tmp_path.iterdir())


def test_export_then_fine_tune_load_follows_mae(tmp_path):
    mae = tiny_mae()
    save_encoder(tmp_path, mae.encoder_state_dict(), {**mae.encoder_arch, **PREPROCESS})
    classifier = tiny_classifier()
    report = load_vit_weights(classifier, tmp_path / "encoder.safetensors")
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight"]  # as MAE's main_finetune.py
    assert sorted(report.unexpected) == ["norm.bias", "norm.weight"]
    assert report.info["format"] == "plankton-cli/encoder" and report.adapted == {}
    torch.testing.assert_close(classifier.encoder.blocks[1].mlp.fc1.weight, mae.backbone.vit.blocks[1].mlp.fc1.weight)
    assert torch.equal(classifier.encoder.fc_norm.weight, torch.ones(64))

    mapped = tiny_classifier()
    report = load_vit_weights(mapped, tmp_path, map_norm_to_fc_norm=True)
    assert report.missing == [] and "fc_norm.weight" in report.adapted
    torch.testing.assert_close(mapped.encoder.fc_norm.bias, mae.backbone.vit.norm.bias)


def test_rgb_timm_checkpoint_at_other_size_adapts_to_grayscale(tmp_path):
    source = rgb_timm_vit(img_size=48)  # 6x6 grid, 3 channels, 1000-class head
    path = tmp_path / "timm.safetensors"
    save_file(source.state_dict(), path)

    model = tiny_classifier()  # 4x4 grid, 1 channel
    report = load_vit_weights(model, path)
    expected = source.patch_embed.proj.weight.sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight, expected)
    assert model.encoder.pos_embed.shape == (1, 17, 64)
    torch.testing.assert_close(model.encoder.pos_embed[:, 0], source.pos_embed[:, 0])  # class token untouched
    assert set(report.adapted) == {"patch_embed.proj.weight", "pos_embed"}
    assert "6x6 -> 4x4" in report.adapted["pos_embed"]
    assert {"head.weight", "head.bias", "norm.weight"} <= set(report.unexpected)  # 1000-class head skipped
    torch.testing.assert_close(model.encoder.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model(torch.randn(2, 1, 32, 32)).isfinite().all()


def test_grayscale_to_rgb_and_other_patch_size(tmp_path):
    mae = tiny_mae()
    save_encoder(tmp_path, mae.encoder_state_dict(), {**mae.encoder_arch, **PREPROCESS})
    rgb = create_vit("vit_base_patch16_224", img_size=64, in_chans=3, num_classes=0, **{**VIT, "patch_size": 16})
    report = load_vit_weights(rgb, tmp_path)
    assert rgb.patch_embed.proj.weight.shape == (64, 3, 16, 16)
    assert "kernel resampled" in report.adapted["patch_embed.proj.weight"]
    channels = rgb.patch_embed.proj.weight
    torch.testing.assert_close(channels[:, 0], channels[:, 2])  # repeated and divided by 3


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"model": sd, "epoch": 799, "args": argparse.Namespace(lr=1e-3)}, id="mae-repo"),
        pytest.param(lambda sd: {"state_dict": {f"model.backbone.vit.{k}": v for k, v in sd.items()}, "epoch": 3,
                                 "hyper_parameters": {"lr": 1e-3}}, id="lightning"),
        pytest.param(lambda sd: {"module": {f"encoder.{k}": v for k, v in sd.items()}}, id="module-encoder"),
        pytest.param(lambda sd: sd, id="plain"),
    ],
)
def test_torch_checkpoint_layouts(tmp_path, wrap):
    mae = tiny_mae()
    state = {**mae.encoder_state_dict(), "decoder_pred.weight": torch.zeros(3), "mask_token": torch.zeros(1, 1, 64)}
    path = tmp_path / "checkpoint.pth"
    torch.save(wrap(state), path)
    model = tiny_classifier()
    report = load_vit_weights(model, path)
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight"]
    assert any(k.endswith("decoder_pred.weight") for k in report.unexpected)
    torch.testing.assert_close(model.encoder.pos_embed, mae.backbone.vit.pos_embed)


class Payload:
    """Any class that is not on torch's weights_only allow-list."""


def test_refuses_unsafe_pickles_and_wrong_files(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "payload": Payload()}, unsafe)
    with pytest.raises(ValueError, match="weights_only"):
        load_vit_weights(tiny_classifier(), unsafe)

    not_vit = tmp_path / "cnn.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, not_vit)
    with pytest.raises(ValueError, match="no ViT"):
        load_vit_weights(tiny_classifier(), not_vit)

    deeper = Classifier("vit_base_patch16_224", 3, img_size=32, **{**VIT, "depth": 3})
    shallow = tmp_path / "shallow.safetensors"
    save_file(tiny_classifier().encoder.state_dict(), shallow)
    with pytest.raises(ValueError, match="blocks.2"):
        load_vit_weights(deeper, shallow)

    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_vit_weights(tiny_classifier(), tmp_path / "hf-hub:timm/vit_large_patch16_224.mae")


def test_strict_head(tmp_path):
    path = tmp_path / "timm.safetensors"
    save_file(rgb_timm_vit(img_size=32, num_classes=7).state_dict(), path)
    plain = create_vit("vit_base_patch16_224", img_size=32, in_chans=1, num_classes=7, **VIT)
    assert load_vit_weights(plain, path, strict_head=True).missing == []
    other_head = create_vit("vit_base_patch16_224", img_size=32, in_chans=1, num_classes=4, **VIT)
    with pytest.raises(ValueError, match=r"head\.(weight|bias) has shape"):
        load_vit_weights(other_head, path, strict_head=True)


def test_save_and_load_fine_tuned_model(tmp_path):
    torch.manual_seed(0)
    model = tiny_classifier(num_classes=3).eval()
    info = {**model.arch, **PREPROCESS, "classes": ["Copepoda", "detritus", "bubble"], "thresholds": {"Copepoda": 0.6}}
    save_model(tmp_path / "model", model.state_dict(), info)
    loaded, loaded_info = load_model(tmp_path / "model")
    assert loaded_info.classes == ["Copepoda", "detritus", "bubble"] and loaded_info.thresholds["Copepoda"] == 0.6
    assert json.loads((tmp_path / "model" / "model.json").read_text())["format"] == "plankton-cli/model"
    images = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(images), model(images))

    with pytest.raises(ValueError, match="num_classes"):
        save_model(tmp_path / "bad", model.state_dict(), {**info, "classes": ["a"]})
    save_encoder(tmp_path / "enc", model.encoder.state_dict(), {**model.arch, **PREPROCESS})
    with pytest.raises(ValueError, match="not a fine-tuned model"):
        load_model(tmp_path / "enc" / "encoder.safetensors")


def test_real_lightning_checkpoint(tmp_path):
    """A checkpoint written by a real Lightning Trainer (with a Path hyper-parameter) loads."""
    pl = pytest.importorskip("pytorch_lightning")
    from plankton_cli.train.models.mae import param_groups_weight_decay

    class Pretrain(pl.LightningModule):
        def __init__(self, data_dir: Path = Path("/data"), lr: float = 1e-3):
            super().__init__()
            self.save_hyperparameters()
            self.mae = tiny_mae()

        def training_step(self, batch, batch_idx):
            return self.mae(batch[0]).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(param_groups_weight_decay(self.mae, 0.05), lr=self.hparams.lr)

    module = Pretrain()
    images = torch.utils.data.TensorDataset(torch.randn(4, 1, 32, 32))
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(images, batch_size=4))
    checkpoint = next(tmp_path.rglob("*.ckpt"))

    model = tiny_classifier()
    report = load_vit_weights(model, checkpoint)
    assert report.prefix == "mae.backbone.vit."
    assert any(k.startswith("mae.decoder.") for k in report.unexpected)
    trained = module.mae.backbone.vit.blocks[0].attn.qkv.weight
    torch.testing.assert_close(model.encoder.blocks[0].attn.qkv.weight, trained)
