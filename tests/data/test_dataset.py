"""StoreDataset over small Parquet stores written here from real UVP6 vignettes."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from plankton_cli.prepare.data import (
    ResizeTransform,
    StoreDataLoader,
    StoreDataset,
    compute_mean_std,
    list_classes,
    list_row_groups,
    load_or_compute_stats,
)
from plankton_cli.prepare.data.transforms import resize_to_array
from plankton_cli.store.schema import load_schema
import conftest

UVP6 = conftest.SHARED / "images" / "uvp6-vignettes"


def shared_data() -> Path:
    return conftest.shared_data("images", "uvp6-vignettes")


def uvp6_images(n: int) -> list[tuple[str, bytes]]:
    """``n`` real vignettes as (class name, PNG bytes), classes interleaved."""
    folders = sorted(p for p in shared_data().iterdir() if p.is_dir())
    per_class = [sorted(f.glob("*.png")) for f in folders]
    picked = [files[i] for i in range(n) for files in per_class if i < len(files)][:n]
    return [(p.parent.name.split("__")[0], p.read_bytes()) for p in picked]


def _default(type_: pa.DataType):
    if pa.types.is_string(type_):
        return ""
    if pa.types.is_list(type_):
        return []
    return 0


def write_store(
    dataset_dir: Path,
    images: list[tuple[str | None, bytes]],
    *,
    instrument: str = "UVP6",
    files: int = 2,
    rows_per_group: int = 16,
    id_prefix: str = "",
    first_file: int = 0,
) -> list[str]:
    """Write ``images`` as hive-partitioned Parquet with the objects schema; returns the object ids in order."""
    schema = load_schema("objects").file_schema
    folder = dataset_dir / f"instrument={instrument}"
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"{id_prefix}{instrument}-{i:04d}" for i in range(len(images))]
    for f, chunk in enumerate(np.array_split(np.arange(len(images)), files)):
        columns: dict[str, pa.Array] = {}
        sizes = [Image.open(io.BytesIO(images[i][1])).size for i in chunk]
        given = {
            "object_id": [ids[i] for i in chunk],
            "image": [{"bytes": images[i][1], "path": f"{ids[i]}.png"} for i in chunk],
            "height": [s[1] for s in sizes],
            "width": [s[0] for s in sizes],
            "channels": [1] * len(chunk),
            "label": [images[i][0] for i in chunk],
            "label_status": ["validated" if images[i][0] else "none" for i in chunk],
        }
        for field in schema:
            if field.name in given:
                columns[field.name] = pa.array(given[field.name], field.type)
            elif field.nullable:
                columns[field.name] = pa.nulls(len(chunk), field.type)
            else:
                columns[field.name] = pa.array([_default(field.type)] * len(chunk), field.type)
        table = pa.Table.from_pydict(columns, schema=schema)
        pq.write_table(table, folder / f"part-{first_file + f:05d}.parquet", row_group_size=rows_per_group)
    return ids


@pytest.fixture(scope="module")
def images() -> list[tuple[str, bytes]]:
    return uvp6_images(200)


@pytest.fixture
def store(tmp_path, images) -> tuple[Path, list[str]]:
    """192 objects in 2 files of 6 row groups of 16: 12 row groups, which 2 ranks share evenly."""
    root = tmp_path / "objects"
    ids = write_store(root, images[:192], files=2, rows_per_group=16)
    return root, ids


def ids_of(iterable) -> list[str]:
    out: list[str] = []
    for item in iterable:
        out.extend(item["object_id"] if isinstance(item["object_id"], list) else [item["object_id"]])
    return out


def small(root: Path, **kwargs) -> StoreDataset:
    return StoreDataset(root, ResizeTransform(16), **kwargs)


def test_row_groups_in_stable_order_skipping_hidden_files(store, images):
    root, ids = store
    (root / "_stats.json").write_text("{}")
    for hidden in (root / ".tmp", root / "_staging"):
        write_store(hidden, images[:8], files=1)
    groups = list_row_groups(root)
    assert [(Path(g.path).name, g.index, g.n_rows) for g in groups] == [
        (f"part-{f:05d}.parquet", i, 16) for f in range(2) for i in range(6)
    ]
    assert ids_of(small(root, shuffle=False)) == ids


def test_two_ranks_three_fork_workers_see_every_object_once(store):
    root, ids = store
    per_rank = []
    for rank in range(2):
        loader = StoreDataLoader(
            small(root, rank=rank, world_size=2, seed=3),
            batch_size=8,
            num_workers=3,
            multiprocessing_context="fork",
        )
        batches = list(loader)
        assert all(b["image"].shape[1:] == (1, 16, 16) and b["image"].dtype == torch.uint8 for b in batches)
        per_rank.append(ids_of(batches))
        # The rank's order does not depend on the number of workers.
        assert ids_of(StoreDataLoader(small(root, rank=rank, world_size=2, seed=3), batch_size=8)) == per_rank[-1]
    assert len(per_rank[0]) == len(per_rank[1]) == 96
    assert sorted(per_rank[0] + per_rank[1]) == sorted(ids)


@pytest.mark.parametrize("drop_last", [False, True])
def test_uneven_ranks_get_equal_counts(tmp_path, images, drop_last):
    root = tmp_path / "objects"
    ids = write_store(root, images[:100], files=1, rows_per_group=32)  # groups of 32, 32, 32, 4
    seen = [ids_of(small(root, rank=r, world_size=2, drop_last=drop_last)) for r in range(2)]
    lengths = [len(small(root, rank=r, world_size=2, drop_last=drop_last)) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == lengths[0] == lengths[1]
    counts = Counter(seen[0] + seen[1])
    if drop_last:
        assert max(counts.values()) == 1 and len(seen[0]) == 36  # ranks hold 64 and 36 rows
    else:
        assert set(counts) == set(ids) and len(seen[0]) == 64
    for rank_ids in seen:  # padding repeats the rank's own stream from its start
        stream = list(dict.fromkeys(rank_ids))
        assert rank_ids == (stream * 3)[: len(rank_ids)]


def test_epochs_shuffle_differently_and_reproducibly(store):
    root, ids = store
    dataset = small(root, seed=1)
    epoch0 = ids_of(dataset)
    dataset.set_epoch(1)
    epoch1 = ids_of(dataset)
    again = small(root, seed=1)
    again.set_epoch(1)
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1) == sorted(ids)
    assert ids_of(again) == epoch1
    assert ids_of(small(root, seed=2)) != epoch0
    # Rows are mixed across row groups within the shuffle window, not only within a group.
    assert len({ids.index(i) // 16 for i in epoch0[:16]}) > 1


def test_resume_mid_epoch_from_dataset_state(store):
    root, _ = store
    dataset = small(root, seed=5, rank=1, world_size=2)
    dataset.set_epoch(2)
    iterator = iter(dataset)
    head = [next(iterator)["object_id"] for _ in range(37)]
    state = dataset.state_dict()
    rest = [s["object_id"] for s in iterator]
    assert state == {"epoch": 2, "samples_seen": 74}
    resumed = small(root, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert ids_of(resumed) == rest
    assert len(head) + len(rest) == len(dataset)


def test_resume_loader_with_other_worker_count(store):
    root, _ = store
    loader = StoreDataLoader(small(root, seed=7), batch_size=8, num_workers=2, multiprocessing_context="fork")
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    state = loader.state_dict()
    rest = ids_of(iterator)
    assert state == {"epoch": 0, "samples_seen": 40}
    resumed = StoreDataLoader(small(root, seed=7), batch_size=8)  # no workers this time
    resumed.load_state_dict(state)
    assert ids_of(resumed) == rest
    # The next iter() starts epoch 1 from its beginning; a finished epoch checkpoints as the next one.
    assert loader.state_dict() == {"epoch": 1, "samples_seen": 0}
    assert len(ids_of(loader)) == 192 and loader._epoch == 1


def test_persistent_workers_follow_the_epoch(store):
    root, _ = store
    loader = StoreDataLoader(
        small(root, seed=9), batch_size=16, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    epochs = [ids_of(loader) for _ in range(2)]
    reference = small(root, seed=9)
    reference.set_epoch(1)
    assert epochs[0] != epochs[1] and epochs[1] == ids_of(reference)


def test_sequential_mode_yields_each_row_once_in_order(tmp_path, images):
    root = tmp_path / "objects"
    ids = write_store(root, images[:100], files=2, rows_per_group=16)
    parts = [ids_of(StoreDataLoader(small(root, shuffle=False, rank=r, world_size=2), batch_size=8, num_workers=2,
                                    multiprocessing_context="fork")) for r in range(2)]
    assert parts[0] + parts[1] == ids and parts[0] and parts[1]


def test_filters_and_labels(tmp_path, images):
    root = tmp_path / "objects"
    uvp = [(label if i % 3 else None, data) for i, (label, data) in enumerate(images[:60])]
    uvp_ids = write_store(root, uvp, instrument="UVP6", files=2, rows_per_group=16)
    other_ids = write_store(root, images[60:80], instrument="Zooscan", files=1, rows_per_group=16)
    classes = list_classes(root)
    assert classes == sorted({label for label, _ in images[:80]})

    everything = {s["object_id"]: s["label"] for s in StoreDataset(root, classes=classes)}
    assert set(everything) == set(uvp_ids + other_ids)
    for i, object_id in enumerate(uvp_ids):
        assert everything[object_id] == (classes.index(uvp[i][0]) if uvp[i][0] else -1)

    labelled = ids_of(StoreDataset(root, classes=classes, labelled_only=True, instruments=["UVP6"]))
    assert sorted(labelled) == sorted(i for n, i in enumerate(uvp_ids) if uvp[n][0])

    some = ["Zooscan-0003", "UVP6-0010", "UVP6-0059", "nowhere"]
    assert sorted(ids_of(StoreDataset(root, object_ids=some))) == sorted(some[:3])
    assert ids_of(StoreDataset(root, object_ids=some, instruments=["Zooscan"])) == ["Zooscan-0003"]

    two = classes[:2]
    subset = list(StoreDataset(root, classes=two, labelled_only=True))
    assert subset and {s["label"] for s in subset} <= {0, 1}
    assert all(s["image"][:8] == b"\x89PNG\r\n\x1a\n" for s in subset)  # no transform: the stored bytes


def test_rows_without_image_are_skipped(tmp_path, images):
    root = tmp_path / "objects"
    ids = write_store(root, images[:20], files=1, rows_per_group=8)
    path = next(root.rglob("*.parquet"))
    table = pq.read_table(path, partitioning=None)
    image = table.column("image").to_pylist()
    image[3] = None
    index = table.schema.get_field_index("image")
    table = table.set_column(index, "image", pa.array(image, table.schema.field("image").type))
    pq.write_table(table, path, row_group_size=8)
    assert sorted(ids_of(small(root))) == sorted(ids[:3] + ids[4:])


def test_lightning_resumes_mid_epoch(tmp_path, store):
    pl = pytest.importorskip("pytorch_lightning")
    root, _ = store

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(16 * 16, 1)
            self.seen: list[list[str]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["object_id"])
            return self.layer(batch["image"].flatten(1).float() / 255).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            return StoreDataLoader(small(root, seed=11), batch_size=32)  # 6 batches per epoch

    def trainer(**kwargs):
        return pl.Trainer(
            max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, **kwargs
        )

    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    full = Recorder()
    trainer(callbacks=[checkpoints]).fit(full)
    assert len(full.seen) == 12
    assert sorted(sum(full.seen[:6], [])) == sorted(sum(full.seen[6:], [])) and full.seen[:6] != full.seen[6:]

    for step in (4, 8):  # mid epoch 0, mid epoch 1
        resumed = Recorder()
        ckpt = next((tmp_path / "ckpt").glob(f"*step={step}.ckpt"))
        trainer().fit(resumed, ckpt_path=ckpt)
        assert resumed.seen == full.seen[step:]


def test_stats_match_numpy_and_are_cached_by_fingerprint(tmp_path, images):
    root = tmp_path / "objects"
    write_store(root, images[:40], files=2, rows_per_group=8)
    pixels = np.stack([resize_to_array(data, 32) for _, data in images[:40]]).astype(np.float64) / 255
    stats = compute_mean_std(root, resize=32, max_images=None)
    assert stats["mean"] == pytest.approx(pixels.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(pixels.std(), rel=1e-9)
    assert 0 < compute_mean_std(root, resize=32, max_images=10)["mean"] < 1

    first = load_or_compute_stats(root, resize=32, max_images=None)
    assert first["mean"] == pytest.approx(stats["mean"]) and (root / "_stats.json").exists()
    cached = json.loads((root / "_stats.json").read_text())
    cached["mean"] = 0.123  # proves the next call reads the cache instead of recomputing
    (root / "_stats.json").write_text(json.dumps(cached))
    assert load_or_compute_stats(root, resize=32, max_images=None)["mean"] == 0.123
    assert load_or_compute_stats(root, resize=24, max_images=None)["mean"] != 0.123  # other parameters

    write_store(root, images[40:60], files=1, rows_per_group=8, id_prefix="new-", first_file=2)  # the dataset changed
    assert load_or_compute_stats(root, resize=32, max_images=None)["n_images"] == 60
