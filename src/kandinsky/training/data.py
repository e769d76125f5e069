"""Training data: image + caption pairs from a folder, a CSV/parquet table or .tar shards.

Every source becomes one resumable stream (`SampleStream`): per epoch a deterministic order
from (seed, epoch), split across ranks and DataLoader workers; each item carries its stream
position so the loop can checkpoint "how far each worker got" and resume exactly there.
Bad samples (corrupt image, missing caption or file, too small) are skipped and counted in
a `SkipReport`; they never stop a run. The skip notes ride along with the next good item,
so the count survives DataLoader worker processes.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import math
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from kandinsky.errors import InvalidInput
from kandinsky.training.config import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAPTION_EXTENSIONS = (".txt", ".caption")
_TAR_SHUFFLE_BUFFER = 256


# ---------------------------------------------------------------------------------------------
# Skip report


@dataclass
class SkipReport:
    """How many samples were skipped, per reason, with a few example keys each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, key: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        keys = self.examples.setdefault(reason, [])
        if len(keys) < self.max_examples and key not in keys:
            keys.append(key)

    def merge(self, other: SkipReport) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            keys = self.examples.setdefault(reason, [])
            for key in other.examples.get(reason, []):
                if len(keys) < self.max_examples and key not in keys:
                    keys.append(key)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0 samples"
        parts = []
        for reason in sorted(self.counts):
            examples = ", ".join(self.examples.get(reason, []))
            parts.append(f"{reason}: {self.counts[reason]} (e.g. {examples})")
        return f"skipped {self.total} samples: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipReport:
        return cls(counts=dict(data.get("counts", {})), examples=dict(data.get("examples", {})))


# ---------------------------------------------------------------------------------------------
# Sources: deterministic per-epoch record orders


@dataclass(frozen=True)
class Record:
    """One sample before decoding: where its image and caption are (or their bytes)."""

    key: str
    path: str | None = None
    data: bytes | None = None
    caption: str | None = None
    caption_path: str | None = None
    index: int | None = None  # into a wrapped map-style dataset
    problem: str | None = None  # known bad before decoding (e.g. "no_image" in a shard)


class _ListSource:
    """A known list of records (folder, CSV, parquet, wrapped dataset): shuffled per epoch."""

    def __init__(self, records: Sequence[Record], shuffle: bool) -> None:
        self.records = records
        self.shuffle = shuffle

    def epoch_length(self, part: int, parts: int) -> int:
        return len(range(part, len(self.records), parts))

    def epoch_records(self, epoch: int, seed: int, part: int, parts: int) -> Iterator[Record]:
        n = len(self.records)
        if self.shuffle:
            generator = torch.Generator().manual_seed(_mix(seed, epoch))
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        for i in order[part::parts]:
            yield self.records[i]


class _TarSource:
    """WebDataset-style shards: members `key.jpg` + `key.txt` grouped by key."""

    def __init__(self, shards: list[str], shuffle: bool) -> None:
        self.shards = shards
        self.shuffle = shuffle

    def epoch_length(self, part: int, parts: int) -> None:
        return None

    def epoch_records(self, epoch: int, seed: int, part: int, parts: int) -> Iterator[Record]:
        shards = list(self.shards)
        if self.shuffle:
            random.Random(f"{seed}:{epoch}").shuffle(shards)
        if len(shards) >= parts:  # whole shards per reader: each file is read once
            stream = (r for shard in shards[part::parts] for r in _read_shard(shard))
        else:  # fewer shards than readers: everyone reads all, keeps every parts-th sample
            stream = (
                r
                for i, r in enumerate(r for shard in shards for r in _read_shard(shard))
                if i % parts == part
            )
        if self.shuffle:
            stream = _buffer_shuffle(stream, random.Random(f"{seed}:{epoch}:{part}"))
        yield from stream


def _read_shard(shard: str) -> Iterator[Record]:
    group: dict[str, bytes] = {}
    current: str | None = None
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if key != current:
                    if current is not None:
                        yield _shard_record(shard, current, group)
                    current, group = key, {}
                file = tar.extractfile(member)
                group["." + ext.lower() if dot else ""] = file.read() if file else b""
    except (tarfile.TarError, OSError, EOFError):
        yield Record(key=f"{Path(shard).name}", problem="corrupt_shard")
        return
    if current is not None:
        yield _shard_record(shard, current, group)


def _shard_record(shard: str, key: str, group: dict[str, bytes]) -> Record:
    name = f"{Path(shard).name}/{key}"
    image = next((group[e] for e in IMAGE_EXTENSIONS if e in group), None)
    if image is None:
        return Record(key=name, problem="no_image")
    text = next((group[e] for e in CAPTION_EXTENSIONS if e in group), None)
    caption = text.decode("utf-8", errors="replace").strip() if text is not None else None
    return Record(key=name, data=image, caption=caption)


def _buffer_shuffle(stream: Iterator[Record], rng: random.Random) -> Iterator[Record]:
    buffer: list[Record] = []
    for record in stream:
        buffer.append(record)
        if len(buffer) >= _TAR_SHUFFLE_BUFFER:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def _folder_records(folder: Path) -> list[Record]:
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        key = path.relative_to(folder).with_suffix("").as_posix()
        records.append(Record(key=key, path=str(path), caption_path=str(path.with_suffix(".txt"))))
    if not records:
        raise InvalidInput(f"data.source {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return records


def _table_records(path: Path, cfg: DataConfig) -> list[Record]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = table.column_names
        _check_columns(path, columns, cfg)
        paths = table.column(cfg.path_column).to_pylist()
        captions = table.column(cfg.caption_column).to_pylist()
    else:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            _check_columns(path, columns, cfg)
            rows = list(reader)
        paths = [row[cfg.path_column] for row in rows]
        captions = [row[cfg.caption_column] for row in rows]
    records = []
    for i, (p, caption) in enumerate(zip(paths, captions, strict=True)):
        if p is None or str(p).strip() == "":
            records.append(Record(key=f"row {i}", problem="missing_file"))
            continue
        image_path = Path(str(p))
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        key = str(p)
        if caption is None or (isinstance(caption, float) and math.isnan(caption)):
            caption = None
        records.append(Record(key=key, path=str(image_path), caption=caption))
    if not records:
        raise InvalidInput(f"data.source {path} has no rows")
    return records


def _check_columns(path: Path, columns: list[str], cfg: DataConfig) -> None:
    for option, name in (("path_column", cfg.path_column), ("caption_column", cfg.caption_column)):
        if name not in columns:
            raise InvalidInput(
                f"{path} has no column {name!r} (data.{option}); its columns are: {', '.join(columns)}"
            )


def expand_shards(pattern: str) -> list[str]:
    """`data-{000..009}.tar`, `{a,b}.tar` and shell globs → sorted existing files."""
    patterns = _expand_braces(pattern)
    found: list[str] = []
    for p in patterns:
        matches = sorted(glob.glob(os.path.expanduser(p))) if glob.has_magic(p) else [p]
        found.extend(m for m in matches if os.path.isfile(m) and m not in found)
    return found


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end() :], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [e for o in options for e in _expand_braces(head + o + tail)]


# ---------------------------------------------------------------------------------------------
# Decoding and cropping


def bucket_sizes(image_size: int) -> list[tuple[int, int]]:
    """(height, width) buckets of about image_size² pixels, aspect 1:2 … 2:1.

    Sides are multiples of 64 from 512 px up (the 2.1 UNet's latent must divide by 8) and of
    image_size/8 (at least 8) below that.
    """
    step = 64 if image_size >= 512 else max(8, image_size // 8 // 8 * 8)
    area = image_size * image_size
    sizes = {(image_size, image_size)}
    for h in range(step, 2 * image_size + 1, step):
        w = round(area / h / step) * step
        if w >= step and 0.5 <= w / h <= 2.0:
            sizes.add((h, w))
            sizes.add((w, h))
    return sorted(sizes)


def _nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda hw: (abs(math.log(hw[1] / hw[0]) - ratio), -hw[0] * hw[1]))


def _to_tensor(
    image: Image.Image, size_hw: tuple[int, int], crop: str, rng: random.Random
) -> torch.Tensor:
    """Crop the largest box of the target aspect (centred or random), resize, scale to [-1, 1]."""
    th, tw = size_hw
    w, h = image.size
    box_w, box_h = (w, w * th / tw) if w * th <= h * tw else (h * tw / th, h)
    if crop == "random":
        left, top = rng.uniform(0, w - box_w), rng.uniform(0, h - box_h)
    else:
        left, top = (w - box_w) / 2, (h - box_h) / 2
    box = (left, top, left + box_w, top + box_h)
    image = image.resize((tw, th), Image.Resampling.BICUBIC, box=box, reducing_gap=1.0)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# The stream


class SampleStream(IterableDataset):
    """An endless, resumable stream of {"image", "caption", "key"} dicts for one rank.

    Extra keys: "position" (worker, records read by that worker so far) for checkpoints and
    "skipped" [(reason, key), …] for the samples skipped since the previous item.
    """

    def __init__(
        self,
        source: _ListSource | _TarSource,
        cfg: DataConfig,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        items: Any = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.items = items  # a wrapped map-style dataset, read by index
        self.batch_size = 1
        self.positions: dict[int, int] = {}
        self.batches = 0
        self.report = SkipReport()  # complete only with num_workers=0; the loop counts its own
        self.buckets = bucket_sizes(cfg.image_size) if cfg.buckets else None

    @classmethod
    def from_items(
        cls, dataset: Any, cfg: DataConfig | None = None, rank: int = 0, world_size: int = 1
    ) -> SampleStream:
        """Wrap a map-style dataset of ready dicts (`len` + `[i]`) as a resumable stream."""
        cfg = cfg or DataConfig(source="<dataset>")
        records = [Record(key=str(i), index=i) for i in range(len(dataset))]
        return cls(_ListSource(records, cfg.shuffle), cfg, rank, world_size, items=dataset)

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def set_batch_size(self, batch_size: int) -> None:
        """Buckets release items in groups of this size so that a batch shares one size."""
        self.batch_size = batch_size

    def set_positions(self, positions: dict[int, int], batches: int = 0) -> None:
        """Resume: worker w skips the first positions[w] records of its stream.

        `batches` (how many batches were consumed) restores the DataLoader's round-robin
        phase: it always starts at worker 0, so worker ids are rotated to continue where
        the consumed batches left off.
        """
        self.positions = {int(k): int(v) for k, v in positions.items()}
        self.batches = batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.batches) % workers  # the logical worker whose turn it is
        part, parts = self.rank * workers + worker, self.world_size * workers
        start = self.positions.get(worker, 0)
        epoch, position = 0, 0
        length = self.source.epoch_length(part, parts)
        if length == 0:
            return
        if length:  # skip whole epochs without listing them
            epoch = start // length
            position = epoch * length
        skipped: list[tuple[str, str]] = []
        pending: dict[tuple[int, int], list[dict[str, Any]]] = {}
        while True:
            seen = good = 0
            whole_epoch = position >= start
            for record in self.source.epoch_records(epoch, self.seed, part, parts):
                seen += 1
                position += 1
                if position <= start:
                    continue
                item = self._load(record, epoch)
                if isinstance(item, str):
                    skipped.append((item, record.key))
                    self.report.add(item, record.key)
                    continue
                good += 1
                if self.buckets is None:
                    item["position"], item["skipped"], skipped = (worker, position), skipped, []
                    yield item
                    continue
                group = pending.setdefault(tuple(item["image"].shape[1:]), [])
                group.append(item)
                if len(group) >= self.batch_size:
                    for i, ready in enumerate(group):
                        ready["position"] = (worker, position)
                        ready["skipped"], skipped = (skipped, []) if i == 0 else ([], skipped)
                        yield ready
                    group.clear()
            if seen == 0:
                return
            if whole_epoch and good == 0:
                raise InvalidInput(
                    f"no usable sample in data.source {self.cfg.source}: {self.report.summary()}"
                )
            epoch += 1

    def _load(self, record: Record, epoch: int) -> dict[str, Any] | str:
        """The decoded item, or the reason it is skipped."""
        if record.problem is not None:
            return record.problem
        if self.items is not None:
            try:
                item = dict(self.items[record.index])
            except Exception:
                return "corrupt"
            item.setdefault("key", record.key)
            return item
        caption = record.caption
        if caption is None and record.caption_path is not None:
            try:
                caption = Path(record.caption_path).read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                caption = None
            except (OSError, UnicodeDecodeError):
                return "corrupt_caption"
        if caption is None or str(caption).strip() == "":
            return "no_caption"
        if record.path is not None and record.data is None and not os.path.isfile(record.path):
            return "missing_file"
        try:
            source = io.BytesIO(record.data) if record.data is not None else record.path
            with Image.open(source) as opened:
                opened.load()  # a truncated file fails here, not later in a worker's collate
                image = opened.convert("RGB")
        except Exception:
            return "corrupt"
        if min(image.size) < self.cfg.min_side:
            return "too_small"
        size = (self.cfg.image_size, self.cfg.image_size)
        if self.buckets is not None:
            size = _nearest_bucket(image.width, image.height, self.buckets)
        rng = random.Random(f"{self.seed}:{epoch}:{record.key}")
        tensor = _to_tensor(image, size, self.cfg.crop, rng)
        return {"image": tensor, "caption": str(caption).strip(), "key": record.key}


def build_dataset(
    cfg: DataConfig, rank: int = 0, world_size: int = 1, *, seed: int = 0
) -> SampleStream:
    """The stream for `cfg.source` (folder | .csv | .parquet | .tar shards) on this rank."""
    source = cfg.source
    if not source:
        raise InvalidInput(
            "data.source is empty: give a folder, a .csv/.parquet file or .tar shards"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        records: _ListSource | _TarSource = _ListSource(_folder_records(path), cfg.shuffle)
    elif path.suffix.lower() in (".csv", ".parquet"):
        if not path.is_file():
            raise InvalidInput(f"data.source {source} does not exist")
        records = _ListSource(_table_records(path, cfg), cfg.shuffle)
    elif source.endswith(".tar") or glob.has_magic(source) or "{" in source:
        shards = expand_shards(source)
        if not shards:
            raise InvalidInput(f"data.source {source} matches no .tar shard")
        records = _TarSource(shards, cfg.shuffle)
    else:
        raise InvalidInput(
            f"data.source {source} is not a folder, a .csv/.parquet file or a .tar shard pattern"
        )
    if cfg.crop not in ("center", "random"):
        raise InvalidInput(f"data.crop is {cfg.crop!r}; choose center or random")
    return SampleStream(records, cfg, rank, world_size, seed)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (images must share a size), list the rest; merge positions and skips."""
    batch: dict[str, Any] = {}
    keys: list[str] = []
    for item in items:
        keys.extend(k for k in item if k not in keys)
    for key in keys:
        values = [item.get(key) for item in items]
        if key == "skipped":
            batch[key] = [s for v in values if v for s in v]
        elif key == "position":
            positions: dict[int, int] = {}
            for worker, pos in (v for v in values if v is not None):
                positions[worker] = max(positions.get(worker, 0), pos)
            batch[key] = positions
        elif all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise InvalidInput(
                    f"{key!r} tensors in one batch have different sizes {sorted(shapes)}; "
                    "set data.buckets or a fixed data.image_size"
                )
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


# ---------------------------------------------------------------------------------------------
# Embedding cache


class EmbeddingCache:
    """Frozen-encoder outputs on disk, one safetensors file per key (e.g. model id + caption).

    Saves the text/CLIP encoders' compute on the second epoch and on reruns. Values come
    back on the CPU; a tensor or a dict of tensors.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def get(self, key: str) -> torch.Tensor | dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # a torn or damaged entry is recomputed, not fatal
            return None
        return tensors["__value__"] if set(tensors) == {"__value__"} else tensors

    def put(self, key: str, value: torch.Tensor | dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tensors = {"__value__": value} if isinstance(value, torch.Tensor) else dict(value)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)

    def get_or_compute(
        self, key: str, compute: Callable[[], torch.Tensor | dict[str, torch.Tensor]]
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        cached = self.get(key)
        if cached is not None:
            return cached
        value = compute()
        self.put(key, value)
        return value

    def rows(
        self, keys: Sequence[str], compute: Callable[[list[int]], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """A batch whose row i is stored under keys[i]: the cached rows are read, the others
        computed in one call (`compute(indices)` → batched tensors for those rows) and
        stored. Returns the batch stacked, on the CPU."""
        found = [self.get(key) for key in keys]
        missing = [i for i, row in enumerate(found) if not isinstance(row, dict)]
        if missing:
            fresh = compute(missing)
            for j, i in enumerate(missing):
                row = {name: values[j] for name, values in fresh.items()}
                self.put(keys[i], row)
                found[i] = {name: value.detach().cpu() for name, value in row.items()}
        names = list(found[0])
        return {name: torch.stack([row[name] for row in found]) for name in names}


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers (stable across processes and Python runs)."""
    text = "/".join(str(n) for n in numbers).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)
