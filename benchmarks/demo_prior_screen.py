"""The demo prior screened (session 15; benchmarks/demo_prior_screen.sh runs it): retrain
the demo prior with several recipes on the shipped encoders and score text-to-image with the
shipped decoder across prior guidance scales.

Usage: prep ROOT | variant ROOT NAME STEPS BATCH LR DROP EVALN | base ROOT EVALN"""

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kandinsky.demo import data
from kandinsky.demo import evaluate as ev
from kandinsky.demo import judge as J
from kandinsky.demo import train as T
from kandinsky.demo.config import DEMO, DemoPlan, StagePlan

PLAN = DemoPlan.full()
SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)


def out_json(name, obj):
    import os

    d = Path(os.environ.get("OUT", "/tmp/gpuout"))
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(obj, indent=1))


def evaluate(model: Path, name: str, evaln: int, info: dict) -> None:
    from kandinsky import Kandinsky21
    from kandinsky.demo.judge import Judge

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    judge = Judge.load(T.PACKAGE_JUDGE)
    pipe = Kandinsky21.from_pretrained(model, device=dev)
    res = {}
    for pg in SCALES:
        for lang, k in (("en", 1), ("en", 2), ("ru", 1)):
            if lang == "ru" and pg not in (2.0, 4.0):
                continue
            hits = []
            for n, seed in ((evaln, 0), (2 * evaln, 1)):
                opts = dict(
                    seed=seed,
                    num_steps=25,
                    prior_steps=25,
                    guidance_scale=4.0,
                    prior_guidance_scale=pg,
                )
                pr = data.eval_prompts(n, seed, lang, num_shapes=k)
                a = J.adherence(
                    [s for _, s in pr],
                    judge.predict(ev._text2img([p for p, _ in pr], pipe, 64, opts, chunk=64)),
                )
                hits.append(a["all"] * n)
            res[f"{lang}{k}@{pg}"] = round(sum(hits) / (3 * evaln), 4)
        out_json(name, {**info, "eval": res})
        print(name, pg, {k: v for k, v in res.items() if k.endswith(f"@{pg}")}, flush=True)


def main() -> None:
    mode, root = sys.argv[1], Path(sys.argv[2])
    shared = root / "shared"
    if mode == "prep":
        T.train_demo(shared, PLAN, stages=("data",), threads=8)
        base = root / "base_model"
        shutil.copytree(T.PACKAGE_WEIGHTS, base)
        for f in base.rglob("*.safetensors"):
            save_file({k: v.float() for k, v in load_file(f).items()}, f)
        return
    if mode == "base":
        evaluate(root / "base_model", "shipped", int(sys.argv[3]), {"name": "shipped prior"})
        return
    name, steps, batch, lr, drop, evaln = sys.argv[3:9]
    torch.set_num_threads(2)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").symlink_to(shared / "data")
    shutil.copytree(root / "base_model", out / "model")
    from kandinsky.conversion import save_network
    from kandinsky.loading import build_network, load

    parts = load(out / "model", components=["prior"])
    torch.manual_seed(PLAN.seed + T.UNTRAINED.index("prior"))
    fresh = build_network("prior", DEMO)
    with torch.no_grad():
        fresh.clip_mean.copy_(parts.prior.clip_mean)
        fresh.clip_std.copy_(parts.prior.clip_std)
    save_network("prior", fresh, parts.config, out / "model" / "kandinsky-2-1-prior" / "prior")
    ctx = T._Context(
        out, PLAN, weights=out / "weights", judge=T.PACKAGE_JUDGE, docs=out / "docs", log=T._log
    )
    start = time.perf_counter()
    final = T._train_stage(
        ctx, "prior", StagePlan(int(steps), int(batch), float(lr)), {"drop_text_prob": float(drop)}
    )
    seconds = time.perf_counter() - start
    T._replace_component(ctx.model, final, "prior")
    info = {
        "name": name,
        "steps": int(steps),
        "batch": int(batch),
        "lr": float(lr),
        "drop": float(drop),
        "train_s": round(seconds, 1),
    }
    out_json(name, info)
    print(info, flush=True)
    evaluate(out / "model", name, int(evaln), info)


if __name__ == "__main__":
    main()
