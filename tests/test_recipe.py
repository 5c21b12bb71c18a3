"""The recipe scaler: the paper's values at paper scale, scaled below it, explicit flags always winning."""

from __future__ import annotations

import pytest

from plankton_cli.train.recipe import resolve_recipe


def test_paper_scale_pretrain_is_the_paper_recipe():
    # 443k images (the paper's pretraining set), ViT-L, one node of 4 GPUs at 64 per device.
    recipe = resolve_recipe("pretrain", 443_000, 800, world_size=4, embed_dim=1024, depth=24)
    assert (recipe.batch_size, recipe.accumulate, recipe.effective_batch) == (64, 16, 4096)
    assert recipe.lr == pytest.approx(1.5e-4 * 4096 / 256)
    assert recipe.warmup_steps == 40 * recipe.steps_per_epoch  # the paper's 40 of 800 epochs
    assert recipe.decoder == {"decoder_depth": 8, "decoder_dim": 512, "decoder_heads": 16}
    assert recipe.warnings == []
    assert recipe.chosen["effective_batch"] == "paper" and recipe.chosen["decoder"] == "paper"


def test_paper_scale_finetune_is_the_paper_recipe():
    # DAPlankton SEA-IFCB at full labels: ~28k training images.
    recipe = resolve_recipe("finetune", 28_000, 50)
    assert (recipe.batch_size, recipe.accumulate, recipe.effective_batch) == (128, 1, 128)
    assert recipe.lr == pytest.approx(2e-3)
    assert recipe.warmup_steps == 5 * recipe.steps_per_epoch  # the paper's 5 of 50 epochs
    assert recipe.decoder is None and recipe.warnings == []


def test_tiny_pretrain_gets_eight_steps_per_epoch_a_fractional_warmup_and_a_matched_decoder():
    # The case: 400 ZooScan images, a 96-wide 4-block encoder, 40 epochs.
    recipe = resolve_recipe("pretrain", 400, 40, embed_dim=96, depth=4)
    assert recipe.effective_batch <= 400 // 8 and recipe.steps_per_epoch >= 8
    assert recipe.accumulate == 1 and recipe.batch_size == recipe.effective_batch == 50
    assert recipe.lr == pytest.approx(1.5e-4 * 50 / 256)
    assert recipe.total_steps == 40 * 8 and recipe.warmup_steps == round(0.05 * 320)
    assert recipe.decoder == {"decoder_depth": 1, "decoder_dim": 48, "decoder_heads": 1}
    assert recipe.chosen["effective_batch"] == "scaled" and recipe.chosen["decoder"] == "scaled"
    assert any("too short" in w for w in recipe.warnings)  # 320 steps cannot pretrain an MAE


def test_tiny_finetune_scales_batch_lr_and_warmup():
    # 5 % labels of ~1,000 UVP6 training images: ~50 labelled images.
    recipe = resolve_recipe("finetune", 50, 40)
    assert recipe.effective_batch == 6 and recipe.steps_per_epoch == 9
    assert recipe.lr == pytest.approx(2e-3 * (6 / 128) ** 0.5)  # square-root rule for AdamW
    assert recipe.warmup_steps == round(0.1 * 40 * 9)
    assert recipe.warnings == []
    short = resolve_recipe("finetune", 50, 5)
    assert any("too short" in w for w in short.warnings)


def test_explicit_flags_always_win():
    recipe = resolve_recipe("pretrain", 400, 3, batch_size=32, effective_batch=4096, base_lr=1e-3,
                            warmup_epochs=2, embed_dim=96, depth=4, decoder_depth=8, decoder_dim=512,
                            decoder_heads=16)
    assert (recipe.batch_size, recipe.accumulate, recipe.effective_batch) == (32, 128, 4096)
    assert recipe.lr == pytest.approx(1e-3 * 4096 / 256)
    assert recipe.steps_per_epoch == 1 and recipe.total_steps == 3 and recipe.warmup_steps == 2
    assert recipe.decoder == {"decoder_depth": 8, "decoder_dim": 512, "decoder_heads": 16}
    assert all(recipe.chosen[k] == "flag" for k in ("effective_batch", "batch_size", "lr", "warmup", "decoder"))
    # The failure, now said out loud: one step per epoch, warmup nearly the whole run.
    assert any("1 optimizer step(s) per epoch" in w for w in recipe.warnings)

    finetune = resolve_recipe("finetune", 50, 40, batch_size=16, lr=5e-4, warmup_epochs=1)
    assert (finetune.batch_size, finetune.lr, finetune.warmup_steps) == (16, 5e-4, 4)
    # A batch flag without an lr flag: the paper's lr scaled by that batch.
    assert resolve_recipe("finetune", 50, 40, batch_size=16).lr == pytest.approx(2e-3 * (16 / 128) ** 0.5)


def test_devices_multiply_the_batch_and_max_steps_caps_the_run():
    recipe = resolve_recipe("pretrain", 10_000, 100, world_size=4, embed_dim=384, depth=12)
    # 10,000 // 8 = 1,250 images per step at most: 64 per device × 4 devices × 4 accumulated.
    assert (recipe.batch_size, recipe.accumulate, recipe.effective_batch) == (64, 4, 1024)
    capped = resolve_recipe("finetune", 1000, 50, max_steps=7)
    assert capped.total_steps == 7 and capped.warmup_steps == 1


def test_decoder_heads_follow_a_given_width():
    recipe = resolve_recipe("pretrain", 1000, 10, embed_dim=192, depth=12, decoder_dim=64)
    assert recipe.decoder["decoder_dim"] == 64 and 64 % recipe.decoder["decoder_heads"] == 0
    with pytest.raises(ValueError, match="not divisible"):
        resolve_recipe("pretrain", 1000, 10, embed_dim=192, depth=12, decoder_dim=64, decoder_heads=3)
    with pytest.raises(ValueError, match="needs images"):
        resolve_recipe("finetune", 0, 10)
