"""Our S3Diff against the official implementation's outputs (tests/data/golden).

The tiny official-format checkpoints load through the same code users run
(``S3DiffUpscaler`` -> ``S3Diff.from_pretrained``); every intermediate the golden file
holds is compared with the tolerances of its README (fp32, CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.model

GOLDEN = Path(__file__).parent / "data" / "golden"

# Suggested fp32 CPU tolerances from tests/data/golden/README.md.
ATOL = {
    "deg_score": 1e-5,
    "fourier": 1e-4,
    "de_embed": 2e-4,
    "block_embed": 1e-5,
    "de_mod": 5e-5,
    "x_in": 1e-6,
    "posterior_mean": 1e-4,
    "z": 3e-5,
    "eps": 3e-4,
    "x0": 5e-3,
    "sr": 3e-4,
    "sr_adain": 1e-3,
    "probe_full_forward": 1e-3,
    "probe_single_layer": 2e-5,
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = (actual.double().cpu() - expected.double()).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol:.3g}"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(GOLDEN / "golden_cases.safetensors"))


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((GOLDEN / "golden_manifest.json").read_text())


@pytest.fixture(scope="module")
def upscaler():
    from pipeline.config import ModelConfig
    from workers.s3diff.upscaler import S3DiffUpscaler

    torch.set_num_threads(2)
    config = ModelConfig(name="s3diff", weights=str(GOLDEN / "weights"), device="cpu")
    return S3DiffUpscaler(config)


@pytest.fixture(scope="module")
def trace_a(upscaler, golden):
    """Case A through the unfolded path, recording every intermediate and the inputs and
    outputs of the probe layers (first UNet call = positive prompt = batch row 0)."""
    model = upscaler.model
    probes = {}
    handles = []
    for key in golden:
        if key.startswith("A.probe.") and key.endswith(".in"):
            name = key[len("A.probe.") : -len(".in")]
            part, _, sub = name.partition(".")
            layer = (model.unet if part == "unet" else model.vae).get_submodule(sub)

            def hook(module, inputs, output, name=name):
                if name not in probes:
                    probes[name] = (inputs[0][:1].clone(), output[:1].clone())

            handles.append(layer.register_forward_hook(hook))
    trace: dict = {}
    try:
        model(golden["A.lr"], golden["A.deg_score"], color_fix="none", trace=trace)
    finally:
        for handle in handles:
            handle.remove()
    trace["probes"] = probes
    return trace


@pytest.mark.parametrize("case", ["A", "C", "E"])
def test_degradation_scores(upscaler, golden, case):
    lr = golden[f"{case}.lr"]
    assert_close(
        upscaler.model.estimate_degradation(lr),
        golden[f"{case}.deg_score"],
        ATOL["deg_score"],
        "deg_score",
    )
    # The upscaler's frame estimate is the mean over crops; one crop = the whole LR.
    assert_close(
        upscaler.estimate_degradation(lr), golden[f"{case}.deg_score"][0], ATOL["deg_score"], "mean"
    )


def test_lora_layers_and_block_ids(upscaler, manifest):
    model = upscaler.model
    expected = manifest["lora_layer_block_ids"]
    assert {ref.name: ref.block for ref in model.unet_lora.layers} == expected["unet"]
    assert {ref.name: ref.block for ref in model.vae_lora.layers} == expected["vae"]
    assert len(model.unet_lora.layers) == 257 and len(model.vae_lora.layers) == 31
    scalings = {ref.layer.scaling["default"] for ref in model.unet_lora.layers}
    assert scalings == {8 / 16}
    assert {ref.layer.scaling["vae_skip"] for ref in model.vae_lora.layers} == {8 / 4}


@pytest.mark.parametrize("case", ["A", "C", "E"])
def test_modulation(upscaler, golden, case):
    trace: dict = {}
    upscaler.model.modulation(golden[f"{case}.deg_score"], trace)
    for name, tol in (
        ("fourier", "fourier"),
        ("vae_de_embed", "de_embed"),
        ("unet_de_embed", "de_embed"),
        ("vae_block_embed", "block_embed"),
        ("unet_block_embed", "block_embed"),
        ("vae_de_mod", "de_mod"),
        ("unet_de_mod", "de_mod"),
    ):
        key = f"{case}.{name}"
        if key in golden:
            assert_close(trace[name], golden[key], ATOL[tol], key)


def test_single_layer_probes(upscaler, golden):
    """Each probe layer's golden input through our modulated LoRA layer alone."""
    model = upscaler.model
    model.unfold()
    vae_mod, unet_mod = model.modulation(golden["A.deg_score"])
    model.vae_lora.set_modulation(vae_mod)
    model.unet_lora.set_modulation(unet_mod)
    names = [
        k[len("A.probe.") : -3] for k in golden if k.startswith("A.probe.") and k.endswith(".in")
    ]
    assert len(names) == 10
    layers = {}
    for name in names:
        part, _, sub = name.partition(".")
        layers[name] = (model.unet if part == "unet" else model.vae).get_submodule(sub)
    with torch.no_grad():
        for name, layer in layers.items():
            out = layer(golden[f"A.probe.{name}.in"])
            assert_close(out, golden[f"A.probe.{name}.out"], ATOL["probe_single_layer"], name)
        # The same layers with delta W = scaling * B M^T A folded into the base weights.
        model.vae_lora.fold(vae_mod[0])
        model.unet_lora.fold(unet_mod[0])
        try:
            for name, layer in layers.items():
                out = layer(golden[f"A.probe.{name}.in"])
                tol = ATOL["probe_single_layer"]
                assert_close(out, golden[f"A.probe.{name}.out"], tol, f"{name} (folded)")
        finally:
            model.unfold()


def test_case_a_intermediates(trace_a, golden):
    for name, tol in (
        ("fourier", "fourier"),
        ("unet_de_mod", "de_mod"),
        ("vae_de_mod", "de_mod"),
        ("posterior_mean", "posterior_mean"),
        ("z", "z"),
        ("eps_pos", "eps"),
        ("eps_neg", "eps"),
        ("eps_cfg", "eps"),
        ("x0", "x0"),
        ("sr_nofix", "sr"),
    ):
        assert_close(trace_a[name], golden[f"A.{name}"], ATOL[tol], f"A.{name}")
    assert_close(trace_a["x0"], golden["A.x0_step_prev_sample"], ATOL["x0"], "A.x0_step_prev")


def test_case_a_probes_in_full_forward(trace_a, golden):
    assert len(trace_a["probes"]) == 10
    for name, (inp, out) in trace_a["probes"].items():
        tol = ATOL["probe_full_forward"]
        assert_close(inp, golden[f"A.probe.{name}.in"], tol, f"{name}.in")
        assert_close(out, golden[f"A.probe.{name}.out"], tol, f"{name}.out")


def test_case_a_color_fixes(trace_a, golden):
    from workers.s3diff.color import color_fix

    upsampled = trace_a["upsampled"]
    # The colour fix alone, on the golden inputs...
    exact = color_fix(golden["A.sr_nofix"], upsampled, "wavelet")
    assert_close(exact, golden["A.sr_wavelet_float"], 1e-5, "wavelet(golden sr_nofix)")
    exact = color_fix(golden["A.sr_nofix"], upsampled, "adain")
    assert_close(exact, golden["A.sr_adain_float"], 1e-5, "adain(golden sr_nofix)")
    # ...and on our model's output.
    ours = trace_a["sr_nofix"]
    assert_close(
        color_fix(ours, upsampled, "wavelet"),
        golden["A.sr_wavelet_float"],
        ATOL["sr"],
        "A.sr_wavelet_float",
    )
    assert_close(
        color_fix(ours, upsampled, "adain"),
        golden["A.sr_adain_float"],
        ATOL["sr_adain"],
        "A.sr_adain_float",
    )
    assert_close(color_fix(ours, upsampled, "none"), golden["A.sr_nofix"], ATOL["sr"], "none")


def test_case_a_through_upscaler_folded(upscaler, golden):
    """The user path: folded LoRA, batched CFG, wavelet fix, scores passed as (2,)."""
    sr = upscaler.upscale(golden["A.lr"], golden["A.deg_score"][0])
    assert upscaler.model.unet_lora.folded
    assert sr.dtype == torch.float32 and sr.shape == (1, 3, 128, 128)
    assert_close(sr, golden["A.sr_wavelet_float"], ATOL["sr"], "A.sr_wavelet_float (folded)")


def _official_u8_wavelet(sr_nofix: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
    """The official PIL path: ToPILImage truncates x*255, the fix runs on /255 values."""
    from workers.s3diff.color import color_fix

    def to_u8(x: torch.Tensor) -> torch.Tensor:
        return (x * 255).to(torch.uint8)

    sr = to_u8(sr_nofix).float() / 255
    ref = to_u8(upsampled).float() / 255
    return to_u8(color_fix(sr, ref, "wavelet"))[0].permute(1, 2, 0)


def _assert_u8_close(ours: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    diff = (ours.int() - expected.int()).abs()
    frac = (diff > 0).float().mean().item()
    assert diff.max().item() <= 1 and frac <= 0.01, (
        f"{what}: max {diff.max()}, {frac:.2%} px differ"
    )


@pytest.mark.parametrize("case,tile,overlap", [("C", 16, 8), ("E", 8, 3)])
def test_tiled_cases(upscaler, golden, manifest, case, tile, overlap):
    """Official latent tiling: C is 3x3 tiles; E is non-square, reflect-padded, with the
    last tile snapped to the edge."""
    from workers.s3diff.model import LatentTiling

    trace: dict = {}
    sr = upscaler.model(
        golden[f"{case}.lr"],
        golden[f"{case}.deg_score"],
        color_fix="wavelet",
        latent_tiling=LatentTiling(tile, overlap),
        trace=trace,
    )
    expected_corners = [tuple(c) for c in manifest["cases"][case]["tile_offsets_yx_in_call_order"]]
    assert trace["tile_corners"] == expected_corners
    # float64 closed form; equal up to 1 ulp of exp() across numpy/libm builds.
    assert_close(trace["tile_weights"], golden[f"{case}.tile_weights"], 1e-14, "tile_weights")
    for name, tol in (
        ("unet_de_mod", "de_mod"),
        ("vae_de_mod", "de_mod"),
        ("x_in", "x_in"),
        ("z", "z"),
        ("tile_eps_pos", "eps"),
        ("tile_eps_neg", "eps"),
        ("eps_cfg", "eps"),
        ("x0", "x0"),
        ("sr_nofix", "sr"),
    ):
        if f"{case}.{name}" in golden:
            assert_close(trace[name], golden[f"{case}.{name}"], ATOL[tol], f"{case}.{name}")
    if f"{case}.sr_wavelet_float" in golden:
        assert_close(sr, golden[f"{case}.sr_wavelet_float"], ATOL["sr"], f"{case}.sr_wavelet_float")
    u8 = _official_u8_wavelet(trace["sr_nofix"], trace["upsampled"])
    _assert_u8_close(u8, golden[f"{case}.sr_wavelet_u8"], f"{case}.sr_wavelet_u8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_golden_on_cuda_fp32(golden):
    """The same official outputs on a CUDA device in fp32 (TF32 off): case A through the
    user path (folded, batched CFG, wavelet fix) and case E with the official tiling."""
    from pipeline.config import ModelConfig
    from workers.s3diff.model import LatentTiling
    from workers.s3diff.upscaler import S3DiffUpscaler

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        config = ModelConfig(
            name="s3diff", weights=str(GOLDEN / "weights"), device="cuda", precision="fp32"
        )
        gpu = S3DiffUpscaler(config)
        assert next(gpu.model.unet.parameters()).is_cuda
        sr = gpu.upscale(golden["A.lr"].cuda(), golden["A.deg_score"][0].cuda())
        assert_close(sr, golden["A.sr_wavelet_float"], ATOL["sr"], "A.sr_wavelet_float (cuda)")
        trace: dict = {}
        gpu.model(
            golden["E.lr"].cuda(),
            golden["E.deg_score"].cuda(),
            color_fix="none",
            latent_tiling=LatentTiling(8, 3),
            trace=trace,
        )
        assert_close(trace["sr_nofix"], golden["E.sr_nofix"], ATOL["sr"], "E.sr_nofix (cuda)")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
