"""Peak memory of `kandinsky.load` at full size: does loading hold two copies of the weights?

Target (from the issue): peak RSS during a load, minus the RSS before it, is at most
1.15 x the bytes of the loaded weights.

Usage (from the repository root, with the project's virtual environment active):

    python benchmarks/load_memory.py           # every case, full size (~10 min, ~10 GB of
                                               # temporary files, ~15 GB of RAM at the peak of
                                               # writing); writes benchmarks/results/load_memory.{md,json}
    python benchmarks/load_memory.py --quick   # MoVQ only (seconds); prints the table, writes nothing

Options: `--tmp DIR` puts the temporary weight files under DIR (default: the system temp dir);
`--keep` leaves them there; `--write` also writes the results files after `--quick`.

Method: synthetic weights with the released architecture (`KANDINSKY_2_1`) are written by a
separate subprocess (its memory is never measured): the decoder UNet as a diffusers folder
(fp32 safetensors) and as the original `decoder_fp16.ckpt` (pickle, fp16 convolution kernels,
fp32 rest, as released), and the MoVQ as the original `movq_final.ckpt` (fp32). Each case then
runs in a fresh child process: it imports torch and kandinsky (the loader and model modules
included), takes its RSS as the baseline, calls `load(...)` while a thread samples RSS every
5 ms, and finally reads `getrusage(RUSAGE_SELF).ru_maxrss`, the kernel's exact high-water mark,
used as the peak. ratio = (peak - baseline) / bytes of the loaded state dict. Files are read
from a warm page cache (they were just written); page cache is not part of RSS.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET = 1.15
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GB = 1e9

# name → (folder, component, load dtype, description)
CASES: dict[str, tuple[str, str, str, str]] = {
    "unet_diffusers_fp32": (
        "unet_diffusers",
        "unet",
        "fp32",
        "UNet, diffusers fp32 safetensors → fp32",
    ),
    "unet_original_fp16": (
        "unet_original",
        "unet",
        "fp16",
        "UNet, original decoder_fp16.ckpt → fp16",
    ),
    "unet_original_fp32": (
        "unet_original",
        "unet",
        "fp32",
        "UNet, original decoder_fp16.ckpt → fp32",
    ),
    "movq_original_fp32": (
        "movq_original",
        "movq",
        "fp32",
        "MoVQ, original movq_final.ckpt fp32 → fp32",
    ),
}
QUICK = ("movq_original_fp32",)
MAKES = {"unet_diffusers": "unet", "unet_original": "unet", "movq_original": "movq"}


# ------------------------------------------------------------------ writing the weight files


def _filled(name: str):
    """The full-size network `name` with cheap random values (values do not matter here)."""
    import torch

    from kandinsky.config import KANDINSKY_2_1
    from kandinsky.loading import build_network

    with torch.device("meta"):
        module = build_network(name, KANDINSKY_2_1)
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.uniform_(-0.05, 0.05, generator=generator)
                if key.endswith("weight") and tensor.ndim == 1:
                    tensor.add_(1.0)
            else:
                tensor.zero_()
    return module


def make_files(kind: str, root: Path) -> None:
    """Runs in its own subprocess: write the files of one network (`unet` or `movq`)."""
    import torch

    from kandinsky.checkpoints.original import to_original
    from kandinsky.config import KANDINSKY_2_1

    try:
        from kandinsky.conversion import save_network
    except ImportError:  # the module's earlier name
        from kandinsky.convert import save_network
    from kandinsky.loading import original_key_map

    module = _filled(kind)
    state = module.state_dict()
    if kind == "unet":
        diffusers = root / "unet_diffusers"
        diffusers.mkdir(parents=True, exist_ok=True)
        (diffusers / "model_index.json").write_text(
            json.dumps(
                {"_class_name": "KandinskyPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
            )
        )
        save_network("unet", module, KANDINSKY_2_1, diffusers / "unet")
        gc.collect()
    original = to_original(state, original_key_map(kind, KANDINSKY_2_1, state))
    del module, state
    gc.collect()
    if kind == "unet":  # like the release: convolution kernels fp16, everything else fp32
        for key in list(original):
            if original[key].ndim >= 3:
                original[key] = original[key].half()
        folder, file = root / "unet_original", "decoder_fp16.ckpt"
    else:
        folder, file = root / "movq_original", "movq_final.ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(original, folder / file)


# ------------------------------------------------------------------ measuring one load


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _maxrss_bytes() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024  # Linux reports KiB


def _malloc_trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


class _Sampler(threading.Thread):
    """Samples RSS every `interval` seconds; keeps the maximum and when it happened."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self.peak_at = 0.0
        self.samples = 0
        self._halt = threading.Event()
        self._start = time.perf_counter()

    def run(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._halt.is_set():
            rss = process.memory_info().rss
            self.samples += 1
            if rss > self.peak:
                self.peak, self.peak_at = rss, time.perf_counter() - self._start
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(case: str, root: Path) -> dict:
    """Runs in a fresh child process: one `load` call, its time and its memory."""
    import torch

    import kandinsky  # noqa: F401
    import kandinsky.loading  # noqa: F401  # the loader and model code are not part of the load
    import kandinsky.models.movq  # noqa: F401
    import kandinsky.models.unet  # noqa: F401
    from kandinsky import KANDINSKY_2_1, load

    folder, component, dtype, _ = CASES[case]
    folder_path = root / folder
    gc.collect()
    cold_baseline = _rss()
    # `load` pays a fixed, size-independent cost on first use: `build_network` imports
    # transformers (via the CLIP builders), and initialising an nn.Embedding on the meta device
    # runs `normal_` through torch._refs, which imports torch._dynamo and sympy (~0.13 GB of
    # Python modules). Pay it before the baseline by building the TINY network of the same kind
    # on meta, so the ratio measures weights; the cost is reported separately.
    from kandinsky.config import TINY
    from kandinsky.loading import build_network

    warm_start = time.perf_counter()
    with torch.device("meta"):
        build_network(component, TINY)
    warmup_seconds = time.perf_counter() - warm_start
    gc.collect()
    baseline = _rss()
    maxrss_before = _maxrss_bytes()
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    loaded = load(
        folder_path, components=[component], config=KANDINSKY_2_1, dtype=dtype, device="cpu"
    )
    seconds = time.perf_counter() - start
    sampler.stop()
    maxrss = _maxrss_bytes()
    final = _rss()
    gc.collect()
    trimmed = _rss() if _malloc_trim() else None
    module = getattr(loaded, component)
    state = module.state_dict()
    weights = sum(t.numel() * t.element_size() for t in state.values())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    file = Path(loaded.sources[component])
    peak = max(maxrss, sampler.peak)
    return {
        "case": case,
        "description": CASES[case][3],
        "file": file.name,
        "file_bytes": file.stat().st_size,
        "layout": loaded.layouts[component],
        "dtype": dtype,
        "loaded_dtypes": dtypes,
        "loaded_bytes": weights,
        "tensors": len(state),
        "cold_baseline_rss": cold_baseline,
        "meta_init_import_rss": baseline - cold_baseline,
        "meta_init_import_seconds": round(warmup_seconds, 3),
        "baseline_rss": baseline,
        "maxrss_before_load": maxrss_before,
        "peak_rss_sampled": sampler.peak,
        "peak_rss_sampled_at_s": round(sampler.peak_at, 3),
        "samples": sampler.samples,
        "peak_rss_ru_maxrss": maxrss,
        "peak_rss": peak,
        "final_rss": final,
        "rss_after_malloc_trim": trimmed,
        "load_seconds": round(seconds, 3),
        "ratio": (peak - baseline) / weights,
        "ratio_incl_meta_init_import": (peak - cold_baseline) / weights,
        "final_ratio": (final - baseline) / weights,
        "torch": torch.__version__,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }


# ------------------------------------------------------------------ driver


def _run(args: list[str], env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def machine() -> dict:
    import psutil
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": psutil.cpu_count(logical=True),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "glibc": "-".join(platform.libc_ver()),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| case | file (GB) | loaded (GB) | peak − baseline (GB) | ratio | "
        f"≤ {TARGET}× | final − baseline (GB) | one-off imports (GB) | ratio incl. imports | "
        "load (s) |",
        "|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['description']} | {r['file_bytes'] / GB:.3f} | {r['loaded_bytes'] / GB:.3f} | "
            f"{(r['peak_rss'] - r['baseline_rss']) / GB:.3f} | {r['ratio']:.3f} | "
            f"{'yes' if r['ratio'] <= TARGET else 'NO'} | "
            f"{(r['final_rss'] - r['baseline_rss']) / GB:.3f} | "
            f"{r['meta_init_import_rss'] / GB:.3f} | {r['ratio_incl_meta_init_import']:.3f} | "
            f"{r['load_seconds']:.1f} |"
        )
    return "\n".join(lines)


def report(rows: list[dict], info: dict, generate_seconds: float) -> str:
    today = datetime.date.today().isoformat()
    return f"""# Load memory benchmark

{today} · {info["platform"]} · {info["cpus"]} CPUs · {info["ram_gib"]} GiB RAM · Python \
{info["python"]} · torch {info["torch"]} · {info["glibc"]}

Produced by `python benchmarks/load_memory.py` (synthetic weights took {generate_seconds:.0f} s
to write). Target: peak RSS − baseline ≤ {TARGET} × the loaded weights' bytes.

{table(rows)}

**Method.** Synthetic weights with the released Kandinsky 2.1 architecture are written by a
separate subprocess whose memory is not measured: the decoder UNet as a diffusers folder (fp32
safetensors) and as the original `decoder_fp16.ckpt` (a torch pickle with fp16 kernels of
ndim ≥ 3 and fp32 everything else, as released), and the MoVQ as the original
`movq_final.ckpt` (fp32). Each case runs in a fresh child process that imports torch and
kandinsky, then builds the TINY network of the same kind on the meta device: this pays the
fixed, size-independent cost of a first `load` (transformers, imported by `build_network`
for the CLIP builders, and torch._dynamo + sympy, imported when `nn.init.normal_` runs on a
meta tensor), shown in the "one-off imports" column. Its RSS is then the baseline, and
`load(folder, components=[...], dtype=...)` is called. Peak RSS is the larger of a 5 ms psutil
sampler and `getrusage(RUSAGE_SELF).ru_maxrss` (the kernel's exact high-water mark). "loaded"
is the sum of numel × element size over the loaded module's state dict; ratio = (peak −
baseline) / loaded; "ratio incl. imports" measures from the RSS right after
`import torch, kandinsky` instead. Files are read from a warm page cache (page cache is not
counted in RSS). Raw numbers, including the RSS after `malloc_trim(0)`, are in
`load_memory.json`.

**Reading the numbers.** Safetensors is read tensor by tensor into its own buffers, so the peak
is the weights plus one tensor. An original `.ckpt` goes through `torch.load`, which holds the
whole pickle until its tensors are popped: loading `decoder_fp16.ckpt` as fp16 peaks at the
file's size (its fp32 non-kernel tensors shrink to fp16 after the peak), as fp32 at the
weights' size plus glibc heap kept after frees (returned by `malloc_trim(0)`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MoVQ only; writes no results")
    parser.add_argument("--write", action="store_true", help="write results even with --quick")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary files go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--make", choices=["unet", "movq"], help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.make:
        make_files(args.make, args.root)
        return
    if args.measure:
        print(json.dumps(measure(args.measure, args.root)))
        return

    cases = args.cases or (list(QUICK) if args.quick else list(CASES))
    root = Path(tempfile.mkdtemp(prefix="kandinsky-load-memory-", dir=args.tmp))
    rows: list[dict] = []
    try:
        start = time.perf_counter()
        for kind in sorted({MAKES[CASES[c][0]] for c in cases}, reverse=True):
            print(f"writing synthetic full-size {kind} files to {root} ...", flush=True)
            _run(["--make", kind, "--root", str(root)])
        generate_seconds = time.perf_counter() - start
        for case in cases:
            print(f"measuring {case} ...", flush=True)
            row = json.loads(
                _run(["--measure", case, "--root", str(root)]).strip().splitlines()[-1]
            )
            rows.append(row)
            print(
                f"  ratio {row['ratio']:.3f}, peak−baseline "
                f"{(row['peak_rss'] - row['baseline_rss']) / GB:.2f} GB, {row['load_seconds']:.1f} s",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    info = machine()
    print()
    print(table(rows))
    if args.quick and not args.write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load_memory.md").write_text(report(rows, info, generate_seconds))
    (RESULTS / "load_memory.json").write_text(
        json.dumps(
            {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": info,
                "target_ratio": TARGET,
                "generate_seconds": round(generate_seconds, 1),
                "cases": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {RESULTS / 'load_memory.md'} and {RESULTS / 'load_memory.json'}")


if __name__ == "__main__":
    main()
