#!/usr/bin/env python3
"""The diffusers/PyTorch half of bench/engine_vs_diffusers.py (runs inside bench/.venv).

    diffusers_side.py make OUT_DIR            # random SDXL-architecture models in diffusers layout
    diffusers_side.py time MODEL_DIR --size 256 --steps 4 --batch 1 --runs 3 --threads 2
    diffusers_side.py make OUT_DIR --only sdxl --device cuda --dtype fp16      # on a GPU machine
    diffusers_side.py time OUT_DIR/sdxl --device cuda --dtype fp16 --size 1024 --steps 1,4 --batch 1,4

`make` writes OUT_DIR/tiny (the engine's built-in `tiny` shapes, as the parity fixture) and
OUT_DIR/medium (the engine's `random-medium` shapes), with the real CLIP vocabulary copied from
the parity fixture; `--only sdxl` writes the full SDXL base architecture (2.6 B-parameter UNet,
both text encoders, the VAE) instead, for GPU timings. `time` prints one JSON line per steps ×
batch combination: seconds per image for text encoding, the UNet steps and the VAE decode (mean
over the timed runs, after one warm-up), and the peak RSS (and on a GPU its peak allocation).
"""

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "crates/fleet-engine/tests/fixtures/tiny-sdxl"

# Shapes of the engine's presets (crates/fleet-engine/src/{clip,unet,vae}.rs, pipeline.rs
# `Pipeline::random_with`), written as diffusers/transformers configs.
CLIP = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=2, pad_token_id=1)
PRESETS = {
    "tiny": dict(
        te1=dict(hidden_size=16, intermediate_size=37, num_hidden_layers=3, num_attention_heads=2,
                 hidden_act="quick_gelu", projection_dim=16),
        te2=dict(hidden_size=16, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 hidden_act="gelu", projection_dim=16),
        unet=dict(block_out_channels=(32, 32, 64), layers_per_block=1, transformer_layers_per_block=(1, 2, 1),
                  attention_head_dim=(2, 2, 4), norm_num_groups=8, addition_time_embed_dim=8),
        vae=dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, force_upcast=False),
    ),
    "medium": dict(
        te1=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                 hidden_act="quick_gelu", projection_dim=16),
        te2=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=4,
                 hidden_act="gelu", projection_dim=256),
        unet=dict(block_out_channels=(64, 128, 256), layers_per_block=2, transformer_layers_per_block=(1, 2, 4),
                  attention_head_dim=(1, 2, 4), norm_num_groups=32, addition_time_embed_dim=64),
        vae=dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=32, force_upcast=True),
    ),
    # stabilityai/stable-diffusion-xl-base-1.0 {text_encoder,text_encoder_2,unet,vae}/config.json. The VAE
    # is configured as madebyollin/sdxl-vae-fp16-fix (`force_upcast: false`), the f16 VAE that GPU
    # deployments of SDXL-Lightning run; both sides honour the flag the same way.
    "sdxl": dict(
        te1=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu", projection_dim=768),
        te2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 hidden_act="gelu", projection_dim=1280),
        unet=dict(block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                  attention_head_dim=(5, 10, 20), norm_num_groups=32, addition_time_embed_dim=256),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, force_upcast=False),
    ),
}
# What `make` writes unless told otherwise (the full SDXL takes 14 GB in f32 and a GPU to time).
DEFAULT_PRESETS = ("tiny", "medium")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def randomize_(module, gen):
    """Weights of trained-model scale (N(0, 1/fan_in), unit norms, small biases), so activations
    stay finite through the random network: NaNs or denormals would time something else."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            randn = lambda: torch.randn(p.shape, generator=gen, device=p.device)  # noqa: E731
            if name.endswith("bias"):
                p.copy_(0.02 * randn())
            elif p.ndim == 1:
                p.fill_(1.0)
            elif "embedding" in name and p.ndim == 2:
                p.copy_(0.2 * randn())
            else:
                fan_in = max(1, int(torch.tensor(p.shape[1:]).prod()))
                p.copy_(randn() / fan_in**0.5)


def make(out: Path, only, device, dtype):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    gen = torch.Generator(device=device).manual_seed(10)
    for name in only:
        p = PRESETS[name]
        dst = out / name
        if (dst / "model_index.json").is_file():
            print(f"{dst}: exists")
            continue
        # Built on the device itself: initialising 3.5 B parameters on a CPU takes minutes.
        with torch.device(device):
            te1, te2, unet, vae = build(p)
        for m in (te1, te2, unet, vae):
            randomize_(m, gen)
            m.to(DTYPES[dtype])
        sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="trailing",
                                       prediction_type="epsilon")
        tok1 = CLIPTokenizer.from_pretrained(FIXTURE / "tokenizer")
        tok2 = CLIPTokenizer.from_pretrained(FIXTURE / "tokenizer_2")
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                         tokenizer_2=tok2, unet=unet, scheduler=sched,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
        pipe.save_pretrained(dst, safe_serialization=True)
        # The tokenizers as the SDXL repositories ship them (vocab.json + merges.txt).
        for t in ("tokenizer", "tokenizer_2"):
            (dst / t / "tokenizer.json").unlink(missing_ok=True)
            for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
                shutil.copy(FIXTURE / t / f, dst / t / f)
        params = sum(x.numel() for m in (te1, te2, unet, vae) for x in m.parameters())
        print(f"{dst}: {params / 1e6:.1f} M parameters")


def build(p):
    """The four networks of a preset, with diffusers' default initialisation."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    te1 = CLIPTextModel(CLIPTextConfig(**CLIP, **p["te1"])).eval()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP, **p["te2"])).eval()
    u = p["unet"]
    n = len(u["block_out_channels"])
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=p["te1"]["hidden_size"] + p["te2"]["hidden_size"], use_linear_projection=True,
        addition_embed_type="text_time",
        projection_class_embeddings_input_dim=p["te2"]["projection_dim"] + 6 * u["addition_time_embed_dim"],
        **u,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025, sample_size=1024, **p["vae"],
    ).eval()
    return te1, te2, unet, vae


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_model(a):
    torch.set_num_threads(a.threads)
    from diffusers import StableDiffusionXLPipeline

    dev = torch.device(a.device)
    gpu = dev.type == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    rss_import = peak_rss_mib()
    t = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(a.model, torch_dtype=DTYPES[a.dtype], add_watermarker=False)
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    # As diffusers' own decode: a VAE flagged `force_upcast` decodes in f32.
    vae_dtype = torch.float32 if pipe.vae.config.force_upcast else pipe.vae.dtype
    if pipe.vae.dtype != vae_dtype:
        pipe.vae.to(vae_dtype)
    sync()
    load = time.perf_counter() - t
    prompt = "a photograph of an astronaut riding a horse"

    def once(steps, batch):
        g = torch.Generator(device=dev).manual_seed(0)
        with torch.inference_mode():
            t0 = time.perf_counter()
            pe, _, pooled, _ = pipe.encode_prompt(prompt, device=dev, num_images_per_prompt=batch,
                                                  do_classifier_free_guidance=False)
            sync()
            t1 = time.perf_counter()
            lat = pipe(prompt_embeds=pe, pooled_prompt_embeds=pooled, num_inference_steps=steps, guidance_scale=0.0,
                       width=a.size, height=a.size, output_type="latent", generator=g).images
            sync()
            t2 = time.perf_counter()
            img = pipe.vae.decode(lat.to(vae_dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
            img = (img / 2 + 0.5).clamp(0, 1)
            sync()
            t3 = time.perf_counter()
        assert torch.isfinite(img).all(), "non-finite image"
        return t1 - t0, t2 - t1, t3 - t2

    for batch in a.batch:
        for steps in a.steps:
            once(1, batch)  # warm-up (as the engine bench: one 1-step run)
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            sums = [0.0, 0.0, 0.0]
            for _ in range(a.runs):
                for i, v in enumerate(once(steps, batch)):
                    sums[i] += v
            per = a.runs * batch
            te, dn, vd = (s / per for s in sums)
            line = {"side": "diffusers", "device": str(dev), "dtype": a.dtype, "size": a.size, "steps": steps,
                    "batch": batch, "text": te, "denoise": dn, "vae": vd, "total": te + dn + vd,
                    "images_per_s": 1 / (te + dn + vd), "load": load, "peak_rss_mib": peak_rss_mib(),
                    "rss_after_import_mib": rss_import, "threads": torch.get_num_threads(),
                    "torch": torch.__version__}
            if gpu:
                line["gpu"] = torch.cuda.get_device_name(dev)
                line["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
            print(json.dumps(line), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    ints = lambda v: [int(x) for x in v.split(",")]  # noqa: E731
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--only", type=lambda v: v.split(","), default=list(DEFAULT_PRESETS),
                   help=f"comma-separated presets of {sorted(PRESETS)}")
    m.add_argument("--device", default="cpu")
    m.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    t = sub.add_parser("time")
    t.add_argument("model")
    t.add_argument("--size", type=int, default=256)
    t.add_argument("--steps", type=ints, default=[4], help="comma-separated, one line each")
    t.add_argument("--batch", type=ints, default=[1], help="comma-separated, one line each")
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="cpu")
    t.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    a = ap.parse_args()
    if a.cmd == "make":
        unknown = set(a.only) - set(PRESETS)
        if unknown:
            sys.exit(f"unknown preset(s) {sorted(unknown)}; known: {sorted(PRESETS)}")
        make(a.out, a.only, a.device, a.dtype)
    else:
        time_model(a)


if __name__ == "__main__":
    sys.exit(main())
