#!/usr/bin/env python3
"""fleet-engine vs diffusers/PyTorch on this CPU, same weights, size, steps and batch.

    python3 bench/engine_vs_diffusers.py [--sizes tiny=256,medium=256] [--steps 4] [--batch 1]
                                         [--runs 2] [--repeat 3] [--threads 2]

Run by hand, not in CI. What it does:
1. makes bench/.venv (ignored by git) with torch, diffusers 0.42.1 and transformers, unless it
   exists: a CPU-only torch from PyTorch's own index is tried first; where only PyPI is reachable
   the PyPI `torch` wheel is used (it pulls CUDA libraries, ~5.7 GB installed, and runs on the CPU);
2. saves random SDXL-architecture models in the diffusers layout into bench/.work/models/
   (`tiny` and `medium`: the shapes of the engine's `tiny` and `random-medium` presets);
3. builds the engine benchmark (`cargo test --workspace --no-run`: it is one of the targets);
4. for each model, `--repeat` times: the engine (`engine --model DIR`) and diffusers back to back,
   each in its own process; reports the minimum over the repeats of each stage (seconds per
   image), the peak RSS and the ratio engine / diffusers (below 1: the engine is faster).

Both sides get `--threads` threads (RAYON_NUM_THREADS for candle's matmuls, torch.set_num_threads
for PyTorch). Both libraries make idle threads spin: OpenMP's workers (PyTorch) and candle 0.11's
barrier pool (element-wise ops and convolution data movement; the main thread spins until the pool's
workers finish). On a machine shared with other work (builds) a spinning thread holds a core the
other thread needs, which makes either side several times slower than it is. So each side also
runs in its passive mode, `OMP_WAIT_POLICY=PASSIVE` for PyTorch and `CANDLE_NUM_THREADS=1` for
the engine (no barrier pool; matmuls still use `--threads` rayon threads), and the ratio is taken
between each side's best mode.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = BENCH / ".venv"
PY = VENV / "bin" / "python"
MODELS = BENCH / ".work" / "models"
PACKAGES = ["diffusers==0.42.1", "transformers", "safetensors", "numpy"]


def sh(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def ensure_venv():
    if PY.exists() and subprocess.run([PY, "-c", "import torch, diffusers"], capture_output=True).returncode == 0:
        return
    venv.create(VENV, with_pip=True)
    pip = [PY, "-m", "pip", "install", "--quiet"]
    cpu_index = pip + ["--timeout", "20", "torch", "--index-url", "https://download.pytorch.org/whl/cpu"]
    if subprocess.run(cpu_index).returncode != 0:
        print("PyTorch's CPU index is not reachable; installing torch from PyPI (with CUDA libraries)",
              file=sys.stderr)
        sh(pip + ["torch"])
    sh(pip + PACKAGES)


def engine_binary():
    # The same build as the tests (`cargo test --workspace`): the bench is one of its targets.
    out = subprocess.run(["cargo", "test", "--workspace", "--no-run", "--message-format", "json"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and target.get("name") == "engine" \
                and "bench" in target.get("kind", []) and msg.get("executable"):
            return msg["executable"]
    sys.exit("engine bench binary not found in cargo's output")


ENGINE_LINE = re.compile(r"([\d.]+) s/image = text ([\d.]+) \+ denoise ([\d.]+) \+ vae ([\d.]+); "
                         r"load ([\d.]+) s; peak RSS (\d+) MiB")


def run_engine(exe, model_dir, a, size, passive):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    if passive:
        env["CANDLE_NUM_THREADS"] = "1"
    out = subprocess.run([exe, "--bench", "--model", str(model_dir), "--size", str(size), "--steps", str(a.steps),
                          "--runs", str(a.runs), "--batch", str(a.batch)],
                         env=env, check=True, capture_output=True, text=True).stdout
    m = ENGINE_LINE.search(out)
    if not m:
        sys.exit(f"unexpected engine output:\n{out}")
    total, te, dn, vd, load, rss = (float(x) for x in m.groups())
    return {"text": te, "denoise": dn, "vae": vd, "total": total, "load": load, "peak_rss_mib": rss}


def run_diffusers(model_dir, a, size, passive):
    env = dict(os.environ)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([PY, BENCH / "diffusers_side.py", "time", str(model_dir), "--size", str(size),
                          "--steps", str(a.steps), "--runs", str(a.runs), "--batch", str(a.batch),
                          "--threads", str(a.threads)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def best(results):
    """Minimum of each stage over repeats (each stage's own minimum), peak RSS of the last run."""
    keys = ("text", "denoise", "vae", "total", "load")
    out = {k: min(r[k] for r in results) for k in keys}
    out["peak_rss_mib"] = results[-1]["peak_rss_mib"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny=256,medium=256", help="model=size pairs")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2, help="timed runs per process, after one warm-up")
    ap.add_argument("--repeat", type=int, default=3, help="processes per side; the minimum is reported")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ensure_venv()
    sh([PY, BENCH / "diffusers_side.py", "make", MODELS], stdout=subprocess.DEVNULL)
    exe = engine_binary()
    versions = subprocess.run([PY, "-c", "import torch, diffusers, transformers; "
                               "print(torch.__version__, diffusers.__version__, transformers.__version__)"],
                              capture_output=True, text=True).stdout.split()
    print(f"engine vs diffusers: {a.steps} steps, batch {a.batch}, guidance 0, f32, {a.threads} threads, "
          f"min of {a.repeat} × mean of {a.runs} runs; torch {versions[0]}, diffusers {versions[1]}, "
          f"transformers {versions[2]}")
    print(f"{'model':<8} {'size':>5} {'side':<20} {'s/image':>8} {'text':>7} {'unet':>7} {'vae':>7} "
          f"{'load s':>7} {'peak RSS':>9}")
    for pair in a.sizes.split(","):
        name, size = pair.split("=")
        size = int(size)
        model_dir = MODELS / name
        runs = {("engine", False): [], ("engine", True): [], ("diffusers", False): [], ("diffusers", True): []}
        # Interleaved, so that a change in the machine's load hits every variant alike.
        for _ in range(a.repeat):
            for (side, passive), results in runs.items():
                if side == "engine":
                    results.append(run_engine(exe, model_dir, a, size, passive))
                else:
                    results.append(run_diffusers(model_dir, a, size, passive))
        best_of = {}
        for (side, passive), results in runs.items():
            r = best(results)
            label = f"{side}{' (passive)' if passive else ''}"
            print(f"{name:<8} {size:>5} {label:<20} {r['total']:>8.3f} {r['text']:>7.3f} {r['denoise']:>7.3f} "
                  f"{r['vae']:>7.3f} {r['load']:>7.2f} {r['peak_rss_mib']:>6.0f} MiB")
            if side not in best_of or r["total"] < best_of[side]["total"]:
                best_of[side] = r
        e, d = best_of["engine"], best_of["diffusers"]
        ratio = {k: e[k] / d[k] if d[k] > 0 else float("nan") for k in ("total", "text", "denoise", "vae")}
        print(f"{name:<8} {size:>5} {'ratio (best modes)':<20} {ratio['total']:>8.2f} {ratio['text']:>7.2f} "
              f"{ratio['denoise']:>7.2f} {ratio['vae']:>7.2f}   (engine / diffusers; < 1: engine faster)")

if __name__ == "__main__":
    main()
