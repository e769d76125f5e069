"""Reading and writing weight files, safely and without holding two copies.

- `.safetensors` is read by our own small reader: the header gives every name, dtype and
  shape before any data is touched, and each tensor is read straight into its own buffer
  (no memory map whose pages would count twice while we convert dtypes).
- `.ckpt` / `.bin` / `.pt` / `.th` pickles go through `torch.load(weights_only=True)`; a pickle
  that tries to run code is refused with `UnsafeWeights`.
- Writes go to a temporary name in the same folder and are renamed at the end.
"""

from __future__ import annotations

import abc
import json
import os
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from kandinsky.errors import CorruptWeights, MissingWeights, UnsafeWeights, WeightsError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".th")


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]


class StateDictReader(abc.ABC):
    """A weight file opened for reading tensor by tensor.

    `info` tells names, shapes and dtypes without reading data; `pop(name)` returns one tensor
    and forgets it, so a caller that pops as it converts never holds the file twice.
    """

    def __init__(self, path: Path, info: dict[str, TensorInfo]):
        self.path = path
        self.info = info

    @abc.abstractmethod
    def pop(self, name: str) -> torch.Tensor:
        """Return tensor `name` and drop the reader's hold on it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release whatever is still held."""


class _SafetensorsReader(StateDictReader):
    def __init__(self, path: Path):
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CorruptWeights(f"{path}: file is too short to be safetensors ({size} bytes).")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, 100_000_000):
                raise CorruptWeights(
                    f"{path}: safetensors header length {header_len} is impossible for a "
                    f"{size}-byte file; the file is damaged or not safetensors. Download it again."
                )
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CorruptWeights(
                    f"{path}: unreadable safetensors header ({e}). Download it again."
                ) from e
        if not isinstance(header, dict):
            raise CorruptWeights(
                f"{path}: safetensors header is not a JSON object. Download it again."
            )
        header.pop("__metadata__", None)
        info: dict[str, TensorInfo] = {}
        self._spans: dict[str, tuple[int, int]] = {}
        data_start = 8 + header_len
        for name, entry in header.items():
            dtype, shape, (begin, end) = _header_entry(path, name, entry)
            nbytes = _numel(shape) * _itemsize(dtype)
            if end - begin != nbytes:
                raise CorruptWeights(
                    f"{path}: tensor {name!r} spans {end - begin} bytes, its shape needs {nbytes}."
                )
            if data_start + end > size:
                raise CorruptWeights(
                    f"{path}: file is truncated ({size} bytes, tensor {name!r} ends at byte "
                    f"{data_start + end}). Download it again."
                )
            info[name] = TensorInfo(dtype, shape)
            self._spans[name] = (data_start + begin, nbytes)
        super().__init__(path, info)
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()

    def pop(self, name: str) -> torch.Tensor:
        offset, nbytes = self._spans.pop(name)
        meta = self.info[name]
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        self._file.seek(offset)
        if nbytes and self._file.readinto(memoryview(buffer.numpy())) != nbytes:
            raise CorruptWeights(
                f"{self.path}: file ended while reading {name!r}. Download it again."
            )
        return buffer.view(meta.dtype).reshape(meta.shape)

    def close(self) -> None:
        self._file.close()


def _header_entry(
    path: Path, name: str, entry: object
) -> tuple[torch.dtype, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, byte span) of one header entry, or CorruptWeights naming the tensor."""
    try:
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])  # type: ignore[index]
        shape = tuple(int(s) for s in entry["shape"])  # type: ignore[index]
        begin, end = (int(o) for o in entry["data_offsets"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as e:
        raise CorruptWeights(
            f"{path}: header entry for {name!r} is malformed ({e!r}). Download it again."
        ) from e
    if dtype is None:
        raise CorruptWeights(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']!r}.")  # type: ignore[index]
    if any(s < 0 for s in shape) or not 0 <= begin <= end:
        raise CorruptWeights(f"{path}: header entry for {name!r} has impossible shape or offsets.")
    return dtype, shape, (begin, end)


class _PickleReader(StateDictReader):
    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]):
        self._tensors = tensors
        info = {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in tensors.items()}
        super().__init__(path, info)

    def pop(self, name: str) -> torch.Tensor:
        return self._tensors.pop(name)

    def close(self) -> None:
        self._tensors.clear()


def open_state_dict(path: str | os.PathLike[str]) -> StateDictReader:
    """Open a weight file of any supported format; errors name the file and the remedy."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeights(f"Weight file not found: {path}")
    if path.suffix == ".safetensors":
        return _SafetensorsReader(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _PickleReader(path, _flatten(path, load_pickle(path)))
    raise WeightsError(
        f"{path}: unknown weight file type {path.suffix!r}; expected .safetensors or a torch "
        f"checkpoint ({', '.join(PICKLE_SUFFIXES)})."
    )


def load_pickle(path: Path) -> object:
    """`torch.load` restricted to tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e) or type(e).__name__
        if (
            "Weights only load failed" in text
            or "Unsupported global" in text
            or "Unsupported operand" in text
        ):
            raise UnsafeWeights(
                f"{path}: refused to load — the pickle asks to run code or build objects that are "
                f"not plain tensors ({_first_line(text)}). Only load files from a source "
                f"you trust; ours are read with weights_only=True and cannot run code."
            ) from e
        raise CorruptWeights(
            f"{path}: not a readable torch checkpoint ({_first_line(text)})."
        ) from e
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        IndexError,
        KeyError,
    ) as e:
        raise CorruptWeights(
            f"{path}: cannot read this checkpoint — it looks truncated, empty or damaged "
            f"({_first_line(str(e)) or type(e).__name__}). Download it again."
        ) from e


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0][:200]


def _flatten(path: Path, obj: object) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the common {'state_dict': …} / {'model': …} wrappers."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CorruptWeights(f"{path}: holds no state dict of tensors (found {type(obj).__name__}).")


def read_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a whole (small) weight file into a dict."""
    reader = open_state_dict(path)
    try:
        return {name: reader.pop(name) for name in list(reader.info)}
    finally:
        reader.close()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `target` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_safetensors(
    tensors: dict[str, torch.Tensor], target: Path, metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)


def write_json(data: dict, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
