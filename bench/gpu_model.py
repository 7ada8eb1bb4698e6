"""GPU throughput of the full-size S3Diff architecture, with random weights.

Builds SD-Turbo's UNet and VAE from their config values (S3DIFF_SPEC section 4) in code,
adds random degradation-guided LoRA of ranks 32 (UNet) / 16 (VAE) through the same code
the real model uses, and times 512-px output tiles (128-px LR at x4) in batches. No
download: the numbers are the architecture's, which is what the weights do not change.

Reported per configuration: ms per tile, tiles/s, MFU (5.24 TFLOP per 512-px tile with
CFG, against this card's measured bf16 matmul peak) and peak GPU memory; plus the
bf16-vs-fp32 error on one tile.

    python bench/gpu_model.py                 # the full table (CUDA)
    python bench/gpu_model.py --cpu-smoke     # tiny sizes on CPU: does it build and run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLOP_PER_TILE = 5.24e12  # one 512-px output tile: VAE encode + UNet x2 (CFG) + decode

UNET_FULL = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=(
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),  # diffusers' name for the head count: 64-dim heads
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)
VAE_FULL = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=768,
    scaling_factor=0.18215,
    force_upcast=True,
)
# Same block structure, tiny widths (the golden test model's sizes).
UNET_TINY = {
    **UNET_FULL,
    "block_out_channels": (8, 16, 32, 32),
    "attention_head_dim": (2, 4, 8, 8),
    "cross_attention_dim": 32,
    "norm_num_groups": 4,
    "sample_size": 16,
}
VAE_TINY = {**VAE_FULL, "block_out_channels": (8, 16, 32, 32), "norm_num_groups": 4}


def build_random_s3diff(tiny: bool, device: torch.device, rank_unet: int, rank_vae: int):
    """S3Diff with random base weights and a LoRA branch of realistic size (~30% of a
    layer's output, as in the golden test model), in float32 on ``device``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from workers.s3diff.degradation import DEResNet
    from workers.s3diff.model import DegradationModulation, S3Diff, add_s3diff_adapters

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(UNET_TINY if tiny else UNET_FULL))
        vae = AutoencoderKL(**(VAE_TINY if tiny else VAE_FULL))
        add_s3diff_adapters(unet, vae, rank_unet, rank_vae)
        with torch.no_grad():
            for name, param in list(unet.named_parameters()) + list(vae.named_parameters()):
                if ".lora_A." in name:
                    param.normal_(0, 1 / math.sqrt(param[0].numel()))
                elif ".lora_B." in name:
                    rank = param.shape[1]
                    scaling = 8 / rank
                    param.normal_(0, 0.17 / (scaling * math.sqrt(rank)) / math.sqrt(rank))
        modulation = DegradationModulation(rank_vae, rank_unet)
        with torch.no_grad():
            modulation.W.normal_()
            for part, rank in (("vae", rank_vae), ("unet", rank_unet)):
                fuse = getattr(modulation, f"{part}_fuse_mlp")
                fuse.weight.normal_(0, 1 / math.sqrt(rank) / (0.75 * math.sqrt(320)))
        de_net = DEResNet()
        dim = unet.config.cross_attention_dim
        prompt_embeds = torch.randn(2, 77, dim)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    alpha_bar = scheduler.alphas_cumprod[999].float()
    model = S3Diff(unet, vae, modulation, de_net, prompt_embeds, alpha_bar)
    return model.place(device, torch.float32)


def measure_bf16_peak_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_config(model, device, batch, tile_px, fold, per_tile_scores, iters, warmup):
    """(ms per tile, steady peak GiB, warm-up peak GiB) for ``batch`` LR tiles of ``tile_px``.

    The warm-up peak includes cuDNN's algorithm search (cudnn.benchmark), whose trial
    workspaces can be far larger than what the chosen algorithms need."""
    g = torch.Generator().manual_seed(batch)
    tiles = torch.rand(batch, 3, tile_px, tile_px, generator=g).to(device)
    if per_tile_scores:
        scores = torch.rand(batch, 2, generator=g).to(device)
    else:
        scores = torch.tensor([0.3, 0.6], device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):  # the first call folds the LoRA (cached afterwards)
        model(tiles, scores, fold=fold)
    sync(device)
    first_peak = peak_gib(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        model(tiles, scores, fold=fold)
    sync(device)
    ms_per_tile = (time.perf_counter() - start) / (iters * batch) * 1e3
    return ms_per_tile, peak_gib(device), first_peak


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def stage_breakdown(model, device, batch, tile_px, iters) -> None:
    """ms per tile of each stage at one batch size (folded, current dtype)."""
    g = torch.Generator().manual_seed(7)
    tiles = torch.rand(batch, 3, tile_px, tile_px, generator=g).to(device)
    scores = torch.tensor([[0.3, 0.6]], device=device)
    from workers.s3diff.color import color_fix

    with torch.inference_mode():
        model._prepare_lora(scores, True, None)
        upsampled, x_in = model.preprocess(tiles, 4)
        z = model.encode(x_in)
        eps = model.guided_noise(z, None)[0]
        x0 = model.predict_x0(z, eps)
        decoded = model.decode(x0)
        stages = {
            "preprocess (upsample, pad)": lambda: model.preprocess(tiles, 4),
            "VAE encode": lambda: model.encode(x_in),
            "UNet (CFG, 2 rows per tile)": lambda: model.guided_noise(z, None),
            "VAE decode": lambda: model.decode(x0),
            "wavelet colour fix": lambda: color_fix(decoded * 0.5 + 0.5, upsampled, "wavelet"),
        }
        print(f"stage breakdown, bf16 folded, batch {batch}:")
        for name, fn in stages.items():
            fn()
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            ms = (time.perf_counter() - start) / (iters * batch) * 1e3
            print(f"  {name:<30}{ms:8.2f} ms/tile", flush=True)


def relative_error(model, device, tile_px, dtype) -> tuple[float, float]:
    """(relative L2, max abs) of the output in ``dtype`` against the model as it is now."""
    g = torch.Generator().manual_seed(123)
    tile = torch.rand(1, 3, tile_px, tile_px, generator=g).to(device)
    scores = torch.tensor([0.3, 0.6], device=device)
    reference = model(tile, scores, color_fix="none").float()
    model.place(device, dtype)
    out = model(tile, scores, color_fix="none").float()
    rel = ((out - reference).norm() / reference.norm()).item()
    return rel, (out - reference).abs().max().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--fp32-batches", default="1,4")
    parser.add_argument("--unfolded-batches", default="1,4,16")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    parser.add_argument("--compile-batches", default="8,16")
    parser.add_argument(
        "--graph-batches", default="", help="also compile with CUDA graphs (reduce-overhead)"
    )
    args = parser.parse_args()

    if args.cpu_smoke:
        device, tiny, tile_px, ranks = torch.device("cpu"), True, 16, (8, 4)
        batches, fp32_batches, unfolded_batches = [1, 2], [1, 2], [2]
        iters, warmup, peak_tflops = 1, 1, None
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            print("bench/gpu_model.py needs a CUDA GPU; run with --cpu-smoke to check that it")
            print("builds and runs on CPU at tiny sizes.")
            return 1
        device, tiny, tile_px, ranks = torch.device("cuda"), False, 128, (32, 16)
        batches = [int(b) for b in args.batches.split(",")]
        fp32_batches = [int(b) for b in args.fp32_batches.split(",")]
        unfolded_batches = [int(b) for b in args.unfolded_batches.split(",")]
        iters, warmup = args.iters, 2
        compile_batches = [int(b) for b in args.compile_batches.split(",") if b]
        graph_batches = [int(b) for b in args.graph_batches.split(",") if b]
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        peak_tflops = measure_bf16_peak_tflops(device)
        print(f"measured bf16 matmul peak: {peak_tflops:.0f} TFLOP/s (8192^3)")

    t0 = time.perf_counter()
    model = build_random_s3diff(tiny, device, *ranks)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"built {'tiny' if tiny else 'full-size'} S3Diff ({n_params:.0f} M params, LoRA ranks "
        f"{ranks[0]}/{ranks[1]}) in {time.perf_counter() - t0:.1f} s; "
        f"{tile_px}-px LR tiles -> {tile_px * 4}-px output"
    )

    print(
        f"{'mode':<34}{'batch':>6}{'ms/tile':>10}{'tiles/s':>10}{'MFU':>8}"
        f"{'peak GiB':>10}{'warm-up GiB':>13}"
    )

    def run(label, batch_list, fold, per_tile, warm=warmup):
        for batch in batch_list:
            ms, peak, first = time_config(
                model, device, batch, tile_px, fold, per_tile, iters, warm
            )
            tiles_s = 1e3 / ms
            mfu = f"{FLOP_PER_TILE * tiles_s / (peak_tflops * 1e12):.1%}" if peak_tflops else "n/a"
            print(
                f"{label:<34}{batch:>6}{ms:>10.1f}{tiles_s:>10.2f}{mfu:>8}{peak:>10.2f}"
                f"{first:>13.2f}",
                flush=True,
            )

    tf32 = torch.backends.cuda.matmul.allow_tf32
    run(f"fp32 folded (tf32 {'on' if tf32 else 'off'})", fp32_batches, True, False)
    rel, max_abs = relative_error(model, device, tile_px, torch.bfloat16)  # -> bf16 from here
    run("bf16 folded", batches, True, False)
    run("bf16 unfolded per-tile", unfolded_batches, False, True)
    print()
    stage_breakdown(model, device, max(batches) // 2 or 1, tile_px, iters)
    if args.compile and not args.cpu_smoke:
        for mode, batch_list in (("default", compile_batches), ("reduce-overhead", graph_batches)):
            if not batch_list:
                continue
            print()
            model.enable_compile(mode=mode)
            for batch in batch_list:
                t0 = time.perf_counter()
                run(f"bf16 folded compiled {mode}", [batch], True, False, warm=3)
                print(f"  (compile + warm-up + timing: {time.perf_counter() - t0:.0f} s)")
    print()
    print(
        f"bf16 vs fp32, one tile (folded, no colour fix): relative L2 {rel:.2e}, "
        f"max abs {max_abs:.2e} (output in [0, 1])"
    )
    if peak_tflops:
        print(
            f"MFU: {FLOP_PER_TILE / 1e12:.2f} TFLOP per 512-px tile (CFG included) against "
            f"the measured {peak_tflops:.0f} TFLOP/s bf16 peak"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
