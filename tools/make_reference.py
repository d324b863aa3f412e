#!/usr/bin/env python3
"""Make the diffusers parity fixtures of crates/fleet-engine (run by hand, not in CI).

Builds a SMALL random-weight SDXL-architecture pipeline in diffusers (two CLIP text
encoders, a text_time UNet, an 8x VAE) with the real CLIP vocabulary, saves it in the
diffusers layout (weights stored as float16; every weight is exactly representable in f16,
so the float32 run below is reproduced exactly by loading them), and records diffusers'
outputs into tests/fixtures/reference.safetensors + reference.json.

    python3 -m venv /work/.venv-ref
    /work/.venv-ref/bin/pip install torch diffusers transformers safetensors numpy
    /work/.venv-ref/bin/pip install --no-deps open_clip_torch   # only for its BPE file
    /work/.venv-ref/bin/python tools/make_reference.py [OUT_DIR]
    /work/.venv-ref/bin/python tools/make_reference.py --extras-only   # LoRA + ControlNet fixtures only
                                                       # (needs peft too)
    /work/.venv-ref/bin/python tools/make_reference.py --img2img-only  # image-to-image + inpainting
                                                       # fixtures (tests/fixtures/img2img; reuses the
                                                       # committed tiny model, LoRA and ControlNet)

The image-to-image fixtures were made with diffusers 0.42.1, torch 2.15.0, transformers 5.25.0 and
peft 0.21.2 (recorded in img2img/reference.json). diffusers samples the VAE posterior by default;
these runs take its mean (the engine's choice), and draw the unit noise from the fixture, not
from a torch generator.

The vocabulary: vocab.json/merges.txt are taken from a local folder given by $CLIP_TOKENIZER_DIR,
else derived from open_clip's `bpe_simple_vocab_16e6.txt.gz` (the original OpenAI CLIP BPE
file, from which the Hub's openai/clip-vit-large-patch14 vocab.json and merges.txt are made).
"""

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
OUT = Path(ARGS[0]) if ARGS else ROOT / "crates/fleet-engine/tests/fixtures"
MODEL = OUT / "tiny-sdxl"
torch.set_num_threads(max(1, os.cpu_count() or 1))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab(dst: Path):
    src = os.environ.get("CLIP_TOKENIZER_DIR")
    if src:
        shutil.copy(Path(src) / "vocab.json", dst / "vocab.json")
        shutil.copy(Path(src) / "merges.txt", dst / "merges.txt")
        return
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        sys.exit("need open_clip_torch (pip install --no-deps open_clip_torch) or CLIP_TOKENIZER_DIR")
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (dst / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False))
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def perturb_(module, gen):
    """Random weights everywhere (norm scales and biases too, so loading bugs show), then
    round to float16 precision so the saved f16 weights reproduce this model exactly."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:  # norm weights
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embedding" in name and p.ndim == 2:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            p.copy_(p.half().float())


def to_f16_files(folder: Path):
    for f in folder.rglob("*.safetensors"):
        t = load_file(f)
        save_file({k: (v.half() if v.is_floating_point() else v) for k, v in t.items()}, f, metadata={"format": "pt"})


def main():
    if MODEL.exists():
        shutil.rmtree(MODEL)
    MODEL.mkdir(parents=True)
    gen = torch.Generator().manual_seed(20240221)

    tokdir = OUT / "_vocab"
    tokdir.mkdir(exist_ok=True)
    clip_vocab(tokdir)
    tokenizer = CLIPTokenizer(str(tokdir / "vocab.json"), str(tokdir / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77)
    tokenizer_2 = CLIPTokenizer(str(tokdir / "vocab.json"), str(tokdir / "merges.txt"), pad_token="!", model_max_length=77)

    c1 = CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=37, num_hidden_layers=3,
                        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                        projection_dim=16, bos_token_id=49406, eos_token_id=2, pad_token_id=1)
    c2 = CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                        projection_dim=16, bos_token_id=49406, eos_token_id=2, pad_token_id=1)
    text_encoder = CLIPTextModel(c1).eval()
    text_encoder_2 = CLIPTextModelWithProjection(c2).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32, 64), layers_per_block=1, transformer_layers_per_block=(1, 2, 1),
        attention_head_dim=(2, 2, 4), cross_attention_dim=32, norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, scaling_factor=0.13025, force_upcast=False, sample_size=64,
    ).eval()
    for m in (text_encoder, text_encoder_2, unet, vae):
        perturb_(m, gen)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="trailing",
                                       prediction_type="epsilon", interpolation_type="linear")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(MODEL, safe_serialization=True)
    to_f16_files(MODEL)
    # Ship the tokenizers the way the SDXL repositories do: vocab.json + merges.txt (recent
    # transformers would only write tokenizer.json).
    for t in ("tokenizer", "tokenizer_2"):
        (MODEL / t / "tokenizer.json").unlink(missing_ok=True)
        shutil.copy(tokdir / "vocab.json", MODEL / t / "vocab.json")
        shutil.copy(tokdir / "merges.txt", MODEL / t / "merges.txt")
    shutil.rmtree(tokdir)

    ref = {}
    meta = {"tokenizer": {}, "cases": {}}

    # Tokenizers and encoders.
    long_prompt = ", ".join(["a very detailed photograph of a small orange cat sitting on a wooden table"] * 6)
    prompts = ["a photo of a cat", "A Photo, of: 2 CATS!! don't stop-believing 12345", long_prompt, ""]
    meta["tokenizer"]["prompts"] = prompts
    with torch.no_grad():
        for key, tok, enc in (("te1", tokenizer, text_encoder), ("te2", tokenizer_2, text_encoder_2)):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            ref[f"{key}.ids"] = ids.to(torch.int64)
            out = enc(ids, output_hidden_states=True)
            ref[f"{key}.penultimate"] = out.hidden_states[-2].float()
            if key == "te2":
                ref["te2.text_embeds"] = out.text_embeds.float()

        # UNet alone (with ControlNet-style residuals in a second call).
        sample = torch.randn((2, 4, 6, 10), generator=gen)
        ctx = torch.randn((2, 77, 32), generator=gen)
        text_embeds = torch.randn((2, 16), generator=gen)
        time_ids = torch.tensor([[48.0, 80.0, 0.0, 0.0, 48.0, 80.0], [64.0, 64.0, 4.0, 8.0, 32.0, 96.0]])
        cond = {"text_embeds": text_embeds, "time_ids": time_ids}
        ref["unet.sample"], ref["unet.ctx"], ref["unet.text_embeds"], ref["unet.time_ids"] = sample, ctx, text_embeds, time_ids
        ref["unet.out_t999"] = unet(sample, 999.0, ctx, added_cond_kwargs=cond).sample
        ref["unet.out_t249"] = unet(sample, 249.0, ctx, added_cond_kwargs=cond).sample
        # down residual shapes: conv_in, per block: resnets (+ downsampler)
        shapes = [(32, 6, 10), (32, 6, 10), (32, 3, 5), (32, 3, 5), (32, 2, 3), (64, 2, 3)]
        downs = tuple(0.5 * torch.randn((2, *s), generator=gen) for s in shapes)
        mid = 0.5 * torch.randn((2, 64, 2, 3), generator=gen)
        for i, d in enumerate(downs):
            ref[f"unet.control_down.{i}"] = d
        ref["unet.control_mid"] = mid
        ref["unet.out_control"] = unet(sample, 499.0, ctx, added_cond_kwargs=cond,
                                       down_block_additional_residuals=downs, mid_block_additional_residual=mid).sample

        # VAE decode.
        z = torch.randn((1, 4, 5, 7), generator=gen)
        ref["vae.latents"] = z
        ref["vae.image"] = (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)

        # Scheduler tables.
        for n in (1, 2, 4, 8):
            s = EulerDiscreteScheduler.from_config(scheduler.config)
            s.set_timesteps(n)
            ref[f"sched.{n}.timesteps"] = s.timesteps.double()
            ref[f"sched.{n}.sigmas"] = s.sigmas.double()
            ref[f"sched.{n}.init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)], dtype=torch.float64)

    # Full pipeline runs with explicit unit-variance latents.
    cases = {
        "base": dict(prompt=["a photo of a cat"], steps=4, guidance=0.0, width=64, height=64),
        "sample_1step": dict(prompt=["a photo of a cat"], steps=1, guidance=0.0, width=64, height=64, prediction_type="sample"),
        "non_square": dict(prompt=["a red car on a road"], steps=4, guidance=0.0, width=72, height=48),
        "batch2": dict(prompt=["a photo of a cat", "a red car on a road"], steps=2, guidance=0.0, width=64, height=64),
        "cfg_negative": dict(prompt=["a photo of a cat"], steps=4, guidance=5.0, width=64, height=64, negative_prompt="blurry, low quality"),
        "cfg_zero_negative": dict(prompt=["a photo of a cat"], steps=2, guidance=3.0, width=64, height=64),
        "long_prompt": dict(prompt=[long_prompt], steps=2, guidance=0.0, width=64, height=64),
        "steps8": dict(prompt=["a photo of a cat"], steps=8, guidance=0.0, width=64, height=64),
    }
    for name, c in cases.items():
        b = len(c["prompt"])
        lat = torch.randn((b, 4, c["height"] // 8, c["width"] // 8), generator=gen)
        p = pipe
        if "prediction_type" in c:
            p = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": EulerDiscreteScheduler.from_config(
                scheduler.config, prediction_type=c["prediction_type"])}, force_zeros_for_empty_prompt=True, add_watermarker=False)
            p.set_progress_bar_config(disable=True)
        with torch.no_grad():
            out = p(prompt=c["prompt"], negative_prompt=c.get("negative_prompt"), num_inference_steps=c["steps"],
                    guidance_scale=c["guidance"], width=c["width"], height=c["height"], latents=lat.clone(),
                    output_type="np")
        ref[f"case.{name}.latents"] = lat
        ref[f"case.{name}.image"] = torch.from_numpy(np.ascontiguousarray(out.images)).permute(0, 3, 1, 2).float().contiguous()
        meta["cases"][name] = c

    save_file({k: v.contiguous() for k, v in ref.items()}, OUT / "reference.safetensors")
    import diffusers, transformers

    meta["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    (OUT / "reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.1f} MB)")


# Real SDXL-base component configs (stabilityai/stable-diffusion-xl-base-1.0, */config.json).
SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], center_input_sample=False,
    class_embed_type=None, class_embeddings_concat=False, conv_in_kernel=3, conv_out_kernel=3,
    cross_attention_dim=2048, cross_attention_norm=None,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], downsample_padding=1,
    dual_cross_attention=False, encoder_hid_dim=None, encoder_hid_dim_type=None, flip_sin_to_cos=True, freq_shift=0,
    in_channels=4, layers_per_block=2, mid_block_only_cross_attention=None, mid_block_scale_factor=1,
    mid_block_type="UNetMidBlock2DCrossAttn", norm_eps=1e-05, norm_num_groups=32, num_attention_heads=None,
    num_class_embeds=None, only_cross_attention=False, out_channels=4, projection_class_embeddings_input_dim=2816,
    resnet_out_scale_factor=1.0, resnet_skip_time_act=False, resnet_time_scale_shift="default", sample_size=128,
    time_cond_proj_dim=None, time_embedding_act_fn=None, time_embedding_dim=None, time_embedding_type="positional",
    timestep_post_act=None, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], upcast_attention=None,
    use_linear_projection=True)
SDXL_VAE = dict(act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                force_upcast=True, in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                out_channels=3, sample_size=1024, scaling_factor=0.13025, up_block_types=["UpDecoderBlock2D"] * 4)
SDXL_TE1 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, eos_token_id=2,
                bos_token_id=0, pad_token_id=1, layer_norm_eps=1e-05)
SDXL_TE2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, eos_token_id=2,
                bos_token_id=0, pad_token_id=1, layer_norm_eps=1e-05)


def sdxl_layout():
    """Checkpoint keys and shapes of the real SDXL-base components (built on the meta
    device: no memory, no download), with their configs as diffusers/transformers write them."""
    out = {}
    with torch.device("meta"):
        comps = {
            "unet": UNet2DConditionModel(**SDXL_UNET),
            "vae": AutoencoderKL(**SDXL_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL_TE1)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TE2)),
        }
    from diffusers import ControlNetModel

    with torch.device("meta"):
        comps["controlnet"] = ControlNetModel.from_unet(comps["unet"], load_weights_from_unet=False)
    for name, m in comps.items():
        cfg = dict(m.config) if name in ("unet", "vae", "controlnet") else m.config.to_dict()
        out[name] = {"config": json.loads(json.dumps(cfg, default=str)),
                     "keys": {k: list(v.shape) for k, v in m.state_dict().items()}}
    (OUT / "sdxl_layout.json").write_text(json.dumps(out, separators=(",", ":")))
    print("wrote", OUT / "sdxl_layout.json")


# ---------------------------------------------------------------------------------------------
# LoRA and ControlNet fixtures (on top of the tiny-sdxl pipeline saved by main()).

EXTRA = OUT / "extras"
LORA_SCALES = {"kohya": 0.8, "kohya_sgm": 1.3, "peft": 0.7}


def load_tiny():
    from diffusers import StableDiffusionXLPipeline as P

    pipe = P.from_pretrained(MODEL, torch_dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def r16(t):
    return t.half().float()


def lora_targets(model):
    """Every Linear / Conv2d of a model by module name (what a LoRA can target)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def sgm_name(name, layers, up_types):
    """diffusers UNet module name -> SGM (original SD / sd-scripts) name, dotted."""
    resnet = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}
    fixed = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2"}
    if name in fixed:
        return fixed[name]
    p = name.split(".")
    per = layers + 1
    if p[0] == "down_blocks":
        b = int(p[1])
        if p[2] == "downsamplers":
            return f"input_blocks.{(b + 1) * per}.0.op"
        i = 1 + b * per + int(p[3])
        return f"input_blocks.{i}.0.{resnet[p[4]]}" if p[2] == "resnets" else f"input_blocks.{i}.1." + ".".join(p[4:])
    if p[0] == "mid_block":
        if p[1] == "resnets":
            return f"middle_block.{0 if p[2] == '0' else 2}.{resnet[p[3]]}"
        return "middle_block.1." + ".".join(p[3:])
    if p[0] == "up_blocks":
        b = int(p[1])
        if p[2] == "upsamplers":
            return f"output_blocks.{b * per + layers}.{2 if up_types[b].startswith('CrossAttn') else 1}.conv"
        i = b * per + int(p[3])
        return f"output_blocks.{i}.0.{resnet[p[4]]}" if p[2] == "resnets" else f"output_blocks.{i}.1." + ".".join(p[4:])
    raise ValueError(name)


def random_kohya(pipe, gen, sgm=False, with_te=True, skip=()):
    """A random kohya LoRA over every Linear/Conv2d of the UNet (and text encoders): ranks 2 and
    4, alphas 4, 3 and rank/2 (different from the rank), 3x3 convs as LoCon does."""
    sd = {}
    layers = pipe.unet.config.layers_per_block
    comps = [("unet", pipe.unet)] + ([("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2)] if with_te else [])
    for k, (comp, model) in enumerate(comps):
        for j, (name, m) in enumerate(sorted(lora_targets(model).items())):
            if name in skip:
                continue
            mod = sgm_name(name, layers, pipe.unet.config.up_block_types) if (sgm and comp == "unet") else name
            key = f"lora_{comp}_" + mod.replace(".", "_")
            rank = 2 if (j + k) % 3 == 0 else 4
            if isinstance(m, torch.nn.Linear):
                down = torch.randn((rank, m.in_features), generator=gen) / m.in_features**0.5
                up = torch.randn((m.out_features, rank), generator=gen) * 0.3
            else:
                kh, kw = m.kernel_size
                down = torch.randn((rank, m.in_channels, kh, kw), generator=gen) / (m.in_channels * kh * kw) ** 0.5
                up = torch.randn((m.out_channels, rank, 1, 1), generator=gen) * 0.3
            sd[key + ".lora_down.weight"] = down.half()  # kohya files are usually f16
            sd[key + ".lora_up.weight"] = up.half()
            # sd-scripts writes an alpha for every module. diffusers 0.42 loses the alphas of
            # attention projections (their converted alpha names match no module) and gives
            # them the most common alpha instead; keeping those at the most common value (4)
            # makes diffusers' result the kohya semantics that this fixture checks.
            attn = name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj", "out_proj") \
                or name.endswith("to_out.0")
            alpha = 4.0 if attn or j % 3 == 2 else (float(rank) / 2 if j % 3 == 0 else 3.0)
            sd[key + ".alpha"] = torch.tensor(alpha)
    return sd


def lora_modules_applied(model):
    return sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)


def run_case(pipe, c, lat, **extra):
    with torch.no_grad():
        out = pipe(prompt=c["prompt"], negative_prompt=c.get("negative_prompt"), num_inference_steps=c["steps"],
                   guidance_scale=c["guidance"], width=c["width"], height=c["height"], latents=lat.clone(),
                   output_type="np", **extra)
    return torch.from_numpy(np.ascontiguousarray(out.images)).permute(0, 3, 1, 2).float().contiguous()


def kohya_fixture(name, sgm, gen, ref, meta, lat, case):
    """Write a kohya LoRA, fuse it in diffusers, record the image. Modules that diffusers'
    conversion does not apply are left out of the file (the fixture shows what diffusers does)."""
    path = EXTRA / f"lora_{name}.safetensors"
    skip = set()
    for _ in range(3):
        pipe = load_tiny()
        wanted = sorted(lora_targets(pipe.unet))
        state = random_kohya(pipe, torch.Generator().manual_seed(7 if not sgm else 8), sgm=sgm, skip=skip)
        save_file(state, path)
        pipe.load_lora_weights(str(path), adapter_name=name)
        applied = {"unet": lora_modules_applied(pipe.unet), "te1": lora_modules_applied(pipe.text_encoder),
                   "te2": lora_modules_applied(pipe.text_encoder_2)}
        missing = [n for n in wanted if n not in applied["unet"] and n not in skip]
        if not missing:
            break
        print(f"{name}: diffusers does not apply {missing}; leaving them out")
        skip |= set(missing)
    pipe.fuse_lora(lora_scale=LORA_SCALES[name])
    ref[f"lora.{name}.image"] = run_case(pipe, case, lat)
    meta["loras"][name] = {"file": path.name, "scale": LORA_SCALES[name], "skipped_by_diffusers": sorted(skip),
                           "modules": {k: len(v) for k, v in applied.items()}}


def peft_fixture(gen, ref, meta, lat, case):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from diffusers import StableDiffusionXLPipeline as P

    pipe = load_tiny()
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                     target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                                     "ff.net.2", "conv1", "conv2", "time_emb_proj"],
                     rank_pattern={"proj_in": 2}, alpha_pattern={"to_k": 2})
    pipe.unet.add_adapter(cfg)
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if "lora_" in n:
                p.copy_(r16(torch.randn(p.shape, generator=gen) / (p.shape[1] if "lora_A" in n else 3.0) ** 0.5))
    state = {k: v.half() for k, v in get_peft_model_state_dict(pipe.unet).items()}
    P.save_lora_weights(EXTRA, unet_lora_layers=state, unet_lora_adapter_metadata=cfg.to_dict(),
                        weight_name="lora_peft.safetensors")
    pipe = load_tiny()
    pipe.load_lora_weights(str(EXTRA / "lora_peft.safetensors"), adapter_name="peft")
    pipe.fuse_lora(lora_scale=LORA_SCALES["peft"])
    ref["lora.peft.image"] = run_case(pipe, case, lat)
    meta["loras"]["peft"] = {"file": "lora_peft.safetensors", "scale": LORA_SCALES["peft"],
                             "modules": {"unet": len(lora_modules_applied(pipe.unet))}}


def control_png(w, h, seed):
    """A deterministic control map: a few filled rectangles and a circle (edge-like shapes)."""
    from PIL import Image, ImageDraw

    g = torch.Generator().manual_seed(seed)
    img = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(torch.randint(0, w - 8, (1,), generator=g)), int(torch.randint(0, h - 8, (1,), generator=g))
        x1, y1 = x0 + int(torch.randint(6, w // 2, (1,), generator=g)), y0 + int(torch.randint(6, h // 2, (1,), generator=g))
        col = tuple(int(v) for v in torch.randint(64, 256, (3,), generator=g))
        d.rectangle([x0, y0, x1, y1], outline=col, width=2)
    d.ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], outline=(255, 255, 255), width=1)
    return img


def controlnet_fixture(gen, ref, meta, lat_of):
    from diffusers import ControlNetModel, MultiControlNetModel, StableDiffusionXLControlNetPipeline

    base = load_tiny()
    cn = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8, 8, 16)).eval()
    with torch.no_grad():
        for n, p in cn.named_parameters():
            if n.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                # Zero convs perturbed so the control has a visible effect; the conditioning
                # embedding gets random weights too (it is only partly zero-initialised).
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
                std = 0.1 if p.ndim == 1 else (0.5 if "controlnet_" in n and "cond_embedding" not in n else 1.0) / fan_in**0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))
            p.copy_(r16(p))
    cdir = EXTRA / "tiny-controlnet"
    if cdir.exists():
        shutil.rmtree(cdir)
    cn.save_pretrained(cdir, safe_serialization=True)
    to_f16_files(cdir)
    cn = ControlNetModel.from_pretrained(cdir, torch_dtype=torch.float32).eval()
    comps = {k: v for k, v in base.components.items() if k in ("vae", "text_encoder", "text_encoder_2", "tokenizer",
                                                                "tokenizer_2", "unet", "scheduler")}

    def pipe_with(controlnet):
        p = StableDiffusionXLControlNetPipeline(**comps, controlnet=controlnet, force_zeros_for_empty_prompt=True,
                                                add_watermarker=False)
        p.set_progress_bar_config(disable=True)
        return p

    images = {}
    for key, (w, h, seed) in {"a": (64, 64, 1), "b": (64, 64, 2), "c": (72, 48, 3)}.items():
        img = control_png(w, h, seed)
        img.save(EXTRA / f"control_{key}.png")
        images[key] = img

    # The ControlNet alone, with explicit inputs.
    with torch.no_grad():
        sample = torch.randn((2, 4, 8, 8), generator=gen)
        ctx = torch.randn((2, 77, 32), generator=gen)
        text_embeds = torch.randn((2, 16), generator=gen)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        cond = torch.from_numpy(np.asarray(images["a"], dtype=np.float32) / 255.0).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
        downs, mid = cn(sample, 499.0, ctx, controlnet_cond=cond, conditioning_scale=0.6,
                        added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}, return_dict=False)
        ref.update({"cn.sample": sample, "cn.ctx": ctx, "cn.text_embeds": text_embeds, "cn.time_ids": time_ids,
                    "cn.cond": cond, "cn.mid": mid})
        for i, d in enumerate(downs):
            ref[f"cn.down.{i}"] = d

    cases = {
        "cn_base": dict(prompt=["a photo of a cat"], steps=4, guidance=0.0, width=64, height=64,
                        images=["a"], scale=[0.7], start=[0.0], end=[1.0]),
        "cn_window": dict(prompt=["a red car on a road"], steps=4, guidance=0.0, width=72, height=48,
                          images=["c"], scale=[1.0], start=[0.25], end=[0.75]),
        "cn_cfg": dict(prompt=["a photo of a cat"], steps=2, guidance=3.0, width=64, height=64,
                       negative_prompt="blurry", images=["a"], scale=[0.5], start=[0.0], end=[1.0]),
        "cn_multi": dict(prompt=["a photo of a cat"], steps=2, guidance=0.0, width=64, height=64,
                         images=["a", "b"], scale=[0.5, 0.8], start=[0.0, 0.5], end=[1.0, 1.0]),
    }
    for name, c in cases.items():
        lat = lat_of(c)
        multi = len(c["images"]) > 1
        p = pipe_with(MultiControlNetModel([cn, cn]) if multi else cn)
        imgs = [images[k] for k in c["images"]]
        one = lambda v: v if multi else v[0]  # noqa: E731
        ref[f"case.{name}.latents"] = lat
        ref[f"case.{name}.image"] = run_case(p, c, lat, image=one(imgs), controlnet_conditioning_scale=one(c["scale"]),
                                             control_guidance_start=one(c["start"]), control_guidance_end=one(c["end"]))
        meta["cases"][name] = c


def extras():
    """LoRA and ControlNet fixtures into tests/fixtures/extras (+ extras.safetensors/json)."""
    EXTRA.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(20240515)
    ref, meta = {}, {"loras": {}, "cases": {}}
    case = dict(prompt=["a photo of a cat"], steps=4, guidance=0.0, width=64, height=64)
    lat = torch.randn((1, 4, 8, 8), generator=gen)
    ref["lora.latents"] = lat
    meta["lora_case"] = case
    base = load_tiny()
    ref["lora.base.image"] = run_case(base, case, lat)
    kohya_fixture("kohya", False, gen, ref, meta, lat, case)
    kohya_fixture("kohya_sgm", True, gen, ref, meta, lat, case)
    peft_fixture(gen, ref, meta, lat, case)
    controlnet_fixture(gen, ref, meta, lambda c: torch.randn((len(c["prompt"]), 4, c["height"] // 8, c["width"] // 8),
                                                            generator=gen))
    save_file({k: v.contiguous() for k, v in ref.items()}, EXTRA / "reference.safetensors")
    import diffusers, peft, transformers

    meta["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__}
    (EXTRA / "reference.json").write_text(json.dumps(meta, indent=1))
    total = sum(f.stat().st_size for f in EXTRA.rglob("*") if f.is_file())
    print(f"wrote {EXTRA} ({total / 1e6:.2f} MB)")


I2I = OUT / "img2img"


def init_png(w, h, seed):
    """A deterministic init image: a colour gradient with a few filled shapes."""
    from PIL import Image, ImageDraw

    g = torch.Generator().manual_seed(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.broadcast_to(1 - x * y[..., :1], (h, w, 1))], axis=2)
    img = Image.fromarray((base * 255).round().astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(torch.randint(0, w - 16, (1,), generator=g)), int(torch.randint(0, h - 16, (1,), generator=g))
        col = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g))
        d.rectangle([x0, y0, x0 + 12, y0 + 10], fill=col)
    d.ellipse([w // 3, h // 3, 2 * w // 3, 2 * h // 3], fill=(250, 240, 30))
    return img


def mask_pngs(w, h):
    """A rectangle, and an irregular mask: a polygon and a circle in greys on both sides of the
    0.5 threshold (the light ones repaint, the dark ones keep) in an RGB file."""
    from PIL import Image, ImageDraw

    rect = Image.new("L", (w, h), 0)
    ImageDraw.Draw(rect).rectangle([16, 8, 47, 39], fill=255)
    irr = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(irr)
    d.polygon([(3, 5), (40, 2), (60, 30), (33, 25), (20, 60), (2, 40)], fill=(200, 180, 220))
    d.ellipse([38, 36, 62, 60], fill=(255, 255, 255))
    d.rectangle([4, 44, 14, 58], fill=(100, 110, 120))  # dark grey: keep
    return rect, irr


class FixedNoise:
    """diffusers' pipelines draw their noise with `randn_tensor`; the fixture's unit noise
    stands in for it, and the VAE posterior gives its mean instead of a sample."""

    def __init__(self):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        import diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl_img2img as m_cn
        import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as m_i2i
        import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint as m_inp

        DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mean
        self.noise = None
        for m in (m_cn, m_i2i, m_inp):
            m.randn_tensor = self.draw

    def draw(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(self.noise.shape), (shape, self.noise.shape)
        return self.noise.clone().to(dtype=dtype or torch.float32)


def img2img():
    """Image-to-image and inpainting fixtures into tests/fixtures/img2img."""
    from PIL import Image
    from diffusers import (ControlNetModel, StableDiffusionXLControlNetImg2ImgPipeline,
                           StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline)

    I2I.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(20240601)
    fixed = FixedNoise()
    ref, meta = {}, {"cases": {}}
    init = init_png(64, 64, 11)
    init.save(I2I / "init_a.png")
    init_c = init_png(72, 48, 12)
    init_c.save(I2I / "init_c.png")
    rect, irr = mask_pngs(64, 64)
    rect.save(I2I / "mask_rect.png")
    irr.save(I2I / "mask_irregular.png")
    files = {"init_a.png": init, "init_c.png": init_c, "mask_rect.png": rect, "mask_irregular.png": irr}

    base = load_tiny()
    comps = {k: v for k, v in base.components.items() if k in ("vae", "text_encoder", "text_encoder_2", "tokenizer",
                                                                "tokenizer_2", "unet", "scheduler")}

    def make(cls, components, **extra):
        p = cls(**components, **extra, force_zeros_for_empty_prompt=True, add_watermarker=False)
        p.set_progress_bar_config(disable=True)
        return p

    # The encoder alone: the posterior mean of init_a, scaled.
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(init, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
        ref["encode.init_a"] = base.vae.encode(x).latent_dist.mean * base.vae.config.scaling_factor

    def run(name, pipe, c, **extra):
        b = len(c["prompt"])
        lat = torch.randn((b, 4, c["height"] // 8, c["width"] // 8), generator=gen)
        fixed.noise = lat
        kw = dict(prompt=c["prompt"], negative_prompt=c.get("negative_prompt"), num_inference_steps=c["steps"],
                  guidance_scale=c["guidance"], strength=c["strength"], image=files[c["init"]], output_type="np")
        if "mask" in c:
            kw.update(mask_image=files[c["mask"]], width=c["width"], height=c["height"])
        with torch.no_grad():
            out = pipe(**kw, **extra)
        ref[f"case.{name}.latents"] = lat
        ref[f"case.{name}.image"] = torch.from_numpy(np.ascontiguousarray(out.images)).permute(0, 3, 1, 2).float().contiguous()
        meta["cases"][name] = c

    i2i = make(StableDiffusionXLImg2ImgPipeline, comps)
    cat = ["a photo of a cat"]
    for strength in (0.6, 0.9):
        for steps in (4, 8):
            run(f"i2i_s{int(strength * 10)}_{steps}", i2i, dict(prompt=cat, steps=steps, guidance=0.0, width=64,
                height=64, strength=strength, init="init_a.png"))
    run("i2i_full", i2i, dict(prompt=cat, steps=2, guidance=0.0, width=64, height=64, strength=1.0, init="init_a.png"))
    run("i2i_batch_cfg", i2i, dict(prompt=["a photo of a cat", "a red car on a road"], steps=4, guidance=3.0,
                                   negative_prompt="blurry", width=64, height=64, strength=0.75, init="init_a.png"))
    run("i2i_non_square", i2i, dict(prompt=["a red car on a road"], steps=4, guidance=0.0, width=72, height=48,
                                    strength=0.5, init="init_c.png"))

    inp = make(StableDiffusionXLInpaintPipeline, comps)
    run("inpaint_rect", inp, dict(prompt=cat, steps=4, guidance=0.0, width=64, height=64, strength=0.75,
                                  init="init_a.png", mask="mask_rect.png"))
    run("inpaint_irregular", inp, dict(prompt=cat, steps=8, guidance=0.0, width=64, height=64, strength=0.6,
                                       init="init_a.png", mask="mask_irregular.png"))
    run("inpaint_full_cfg", inp, dict(prompt=cat, steps=4, guidance=3.0, width=64, height=64, strength=1.0,
                                      init="init_a.png", mask="mask_irregular.png"))

    lora = load_tiny()
    lora.load_lora_weights(str(EXTRA / "lora_kohya.safetensors"), adapter_name="kohya")
    lora.fuse_lora(lora_scale=LORA_SCALES["kohya"])
    lcomps = {k: v for k, v in lora.components.items() if k in comps}
    run("i2i_lora", make(StableDiffusionXLImg2ImgPipeline, lcomps),
        dict(prompt=cat, steps=4, guidance=0.0, width=64, height=64, strength=0.6, init="init_a.png",
             lora="lora_kohya.safetensors", lora_scale=LORA_SCALES["kohya"]))

    cn = ControlNetModel.from_pretrained(EXTRA / "tiny-controlnet", torch_dtype=torch.float32).eval()
    control = Image.open(EXTRA / "control_a.png").convert("RGB")
    run("i2i_controlnet", make(StableDiffusionXLControlNetImg2ImgPipeline, comps, controlnet=cn),
        dict(prompt=cat, steps=4, guidance=0.0, width=64, height=64, strength=0.9, init="init_a.png",
             control="control_a.png", scale=0.7, start=0.0, end=0.7),
        control_image=control, controlnet_conditioning_scale=0.7, control_guidance_start=0.0,
        control_guidance_end=0.7)

    save_file({k: v.contiguous() for k, v in ref.items()}, I2I / "reference.safetensors")
    import diffusers, peft, transformers

    meta["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__}
    (I2I / "reference.json").write_text(json.dumps(meta, indent=1))
    total = sum(f.stat().st_size for f in I2I.rglob("*") if f.is_file())
    print(f"wrote {I2I} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    if "--img2img-only" in sys.argv:
        img2img()
        sys.exit(0)
    if "--sdxl-layout-only" not in sys.argv and "--extras-only" not in sys.argv:
        main()
    if "--sdxl-layout-only" not in sys.argv:
        extras()
    sdxl_layout()
