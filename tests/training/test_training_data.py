"""Training data: every source gives the same items; crops, buckets, skips, resume, cache."""

from __future__ import annotations

import csv
import io
import itertools
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kandinsky.errors import InvalidInput
from kandinsky.training.config import DataConfig
from kandinsky.training.data import (
    EmbeddingCache,
    SampleStream,
    bucket_sizes,
    build_dataset,
    collate,
)

SIZES = [(24, 16), (16, 24), (20, 20), (32, 12), (12, 12), (30, 18)]


def _image(i: int, size: tuple[int, int]) -> Image.Image:
    g = torch.Generator().manual_seed(i)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same six pairs as a folder, a CSV, a parquet file and two .tar shards."""
    root = tmp_path_factory.mktemp("sources")
    folder = root / "folder"
    folder.mkdir()
    rows = []
    for i, size in enumerate(SIZES):
        _image(i, size).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"caption {i}\n")
        rows.append({"path": f"folder/img{i}.png", "caption": f"caption {i}"})
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), root / "pairs.parquet")
    for shard in range(2):
        with tarfile.open(root / f"shard-{shard:03d}.tar", "w") as tar:
            for i in range(shard * 3, shard * 3 + 3):
                for name, payload in (
                    (f"img{i}.png", _png(_image(i, SIZES[i]))),
                    (f"img{i}.txt", f"caption {i}".encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return {
        "folder": str(folder),
        "csv": str(root / "pairs.csv"),
        "parquet": str(root / "pairs.parquet"),
        "tar": str(root / "shard-{000..001}.tar"),
        "glob": str(root / "shard-*.tar"),
    }


def _take(dataset: SampleStream, n: int) -> list[dict]:
    return list(itertools.islice(iter(dataset), n))


@pytest.mark.parametrize("kind", ["csv", "parquet", "tar", "glob"])
def test_every_source_yields_the_same_items(sources: dict[str, str], kind: str) -> None:
    def by_caption(source: str) -> dict[str, torch.Tensor]:
        cfg = DataConfig(source=source, image_size=8, shuffle=False)
        return {item["caption"]: item["image"] for item in _take(build_dataset(cfg), len(SIZES))}

    expected = by_caption(sources["folder"])
    got = by_caption(sources[kind])
    assert sorted(got) == sorted(expected) == [f"caption {i}" for i in range(len(SIZES))]
    for caption, image in expected.items():
        assert image.shape == (3, 8, 8) and image.min() >= -1 and image.max() <= 1
        assert torch.equal(got[caption], image), caption


def test_center_and_random_crops_have_the_asked_size(sources: dict[str, str]) -> None:
    center = _take(build_dataset(DataConfig(source=sources["folder"], image_size=12)), 6)
    random_ = _take(
        build_dataset(DataConfig(source=sources["folder"], image_size=12, crop="random")), 6
    )
    assert all(item["image"].shape == (3, 12, 12) for item in center + random_)
    wide = {i["key"]: i["image"] for i in center}["img3"]  # 32×12: room to move the crop
    assert not torch.equal({i["key"]: i["image"] for i in random_}["img3"], wide)
    again = _take(
        build_dataset(DataConfig(source=sources["folder"], image_size=12, crop="random")), 6
    )
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(random_, again, strict=True))


def test_buckets_group_a_batch_by_aspect_ratio(sources: dict[str, str]) -> None:
    assert (32, 32) in bucket_sizes(32) and all(0.5 <= w / h <= 2 for h, w in bucket_sizes(32))
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in bucket_sizes(768))
    dataset = build_dataset(DataConfig(source=sources["folder"], image_size=32, buckets=True))
    dataset.set_batch_size(2)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    shapes = {}
    for batch in itertools.islice(loader, 6):
        assert batch["image"].shape[0] == 2  # collate would raise on mixed sizes
        for key in batch["key"]:
            shapes[key] = tuple(batch["image"].shape[2:])
    assert shapes["img3"][1] > shapes["img3"][0]  # 32×12 → a wide bucket
    assert shapes["img1"][0] > shapes["img1"][1]  # 16×24 → a tall bucket
    assert shapes["img2"] == (32, 32)


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(4):
        _image(i, (16, 16)).save(folder / f"good{i}.png")
        (folder / f"good{i}.txt").write_text(f"good {i}")
    buffer = io.BytesIO()
    _image(9, (64, 64)).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "truncated.txt").write_text("half a file")
    _image(10, (16, 16)).save(folder / "nocaption.png")
    _image(11, (1, 1)).save(folder / "tiny.png")
    (folder / "tiny.txt").write_text("one pixel")
    return folder


def test_bad_samples_are_skipped_and_counted(bad_folder: Path) -> None:
    dataset = build_dataset(DataConfig(source=str(bad_folder), image_size=8))
    items = _take(dataset, 8)  # two epochs of the four good ones
    assert sorted({i["key"] for i in items}) == [f"good{i}" for i in range(4)]
    skipped = [s for i in items for s in i["skipped"]]
    assert sorted(skipped) == sorted(
        [("corrupt", "truncated"), ("no_caption", "nocaption"), ("too_small", "tiny")] * 2
    )
    summary = dataset.report.summary()
    assert "corrupt" in summary and "truncated" in summary and "too_small" in summary


def test_a_folder_of_only_bad_samples_says_so(bad_folder: Path) -> None:
    for good in bad_folder.glob("good*"):
        good.unlink()
    with pytest.raises(InvalidInput, match="no usable sample.*no_caption"):
        _take(build_dataset(DataConfig(source=str(bad_folder))), 1)


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_ranks_see_disjoint_parts(sources: dict[str, str], kind: str) -> None:
    cfg = DataConfig(source=sources[kind], image_size=8)
    keys = [{i["caption"] for i in _take(build_dataset(cfg, rank, 2), 3)} for rank in range(2)]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 6


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_resume_skips_exactly_the_consumed_samples(sources: dict[str, str], kind: str) -> None:
    cfg = DataConfig(source=sources[kind], image_size=8)
    straight = _take(build_dataset(cfg, seed=3), 16)  # crosses two epoch boundaries
    first = straight[:9]
    resumed = build_dataset(cfg, seed=3)
    resumed.set_positions(collate(first)["position"])
    rest = _take(resumed, 7)
    assert [i["key"] for i in rest] == [i["key"] for i in straight[9:]]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(rest, straight[9:], strict=True))
    assert {i["key"] for i in straight[:6]} != {i["key"] for i in straight[6:12]} or [
        i["key"] for i in straight[:6]
    ] != [i["key"] for i in straight[6:12]]  # a new order per epoch


def test_resume_with_workers_continues_each_worker(sources: dict[str, str]) -> None:
    cfg = DataConfig(source=sources["folder"], image_size=8)

    def loader(dataset: SampleStream) -> DataLoader:
        return DataLoader(dataset, batch_size=2, collate_fn=collate, num_workers=2)

    straight = list(itertools.islice(loader(build_dataset(cfg)), 6))
    positions: dict[int, int] = {}
    for batch in straight[:3]:
        positions.update(batch["position"])
    resumed = build_dataset(cfg)
    resumed.set_positions(positions, batches=3)
    rest = list(itertools.islice(loader(resumed), 3))
    assert [b["key"] for b in rest] == [b["key"] for b in straight[3:]]


def test_table_with_a_wrong_column_names_the_columns(sources: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match="image_name.*path, caption"):
        build_dataset(DataConfig(source=sources["csv"], path_column="image_name"))
    with pytest.raises(InvalidInput, match="matches no .tar"):
        build_dataset(DataConfig(source="/nonexistent/shard-{0..3}.tar"))


def test_embedding_cache_computes_once(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"full_emb": torch.randn(2, 77, 4), "pooled_emb": torch.randn(2, 4)}

    first = cache.get_or_compute("mclip|a red cat", compute)
    second = cache.get_or_compute("mclip|a red cat", compute)
    assert len(calls) == 1
    assert all(torch.equal(first[k], second[k]) for k in first)
    tensor = cache.get_or_compute("clip|x", lambda: torch.ones(3))
    assert torch.equal(cache.get_or_compute("clip|x", lambda: torch.zeros(3)), tensor)
    assert cache.get("never seen") is None
