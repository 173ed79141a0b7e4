"""Forward+backward time per image of the published CIFAR-10 DDPM++ and NCSN++ networks.

CPU at a small batch (default 2); on CUDA (when available) at batch 128 in fp32 and in
bf16 autocast.  Prints a markdown table.  Usage: python bench/model_speed.py [--cpu-batch 2] [--reps 3]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import ml_collections
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from score_sde.models import get_model  # noqa: E402

COMMON = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
              resamp_with_conv=True, conditional=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
              resblock_type="biggan", progressive="none", progressive_combine="sum", attention_type="ddpm",
              init_scale=0.0, fourier_scale=16, conv_size=3, nonlinearity="swish", normalization="GroupNorm",
              sigma_min=0.01, sigma_max=50.0, num_scales=1000, beta_min=0.1, beta_max=20.0, name="ncsnpp")
CONFIGS = {  # model fields of score_sde_pytorch's vp/cifar10_ddpmpp_continuous and ve/cifar10_ncsnpp_continuous
    "DDPM++ (vp/cifar10_ddpmpp_continuous)": (dict(COMMON, fir=False, progressive_input="none",
                                                    embedding_type="positional", scale_by_sigma=False), "vpsde"),
    "NCSN++ (ve/cifar10_ncsnpp_continuous)": (dict(COMMON, fir=True, progressive_input="residual",
                                                    embedding_type="fourier", scale_by_sigma=True), "vesde"),
}


def build(name: str, device: torch.device) -> torch.nn.Module:
    model_cfg, sde = CONFIGS[name]
    cfg = ml_collections.ConfigDict({"model": model_cfg, "training": {"continuous": True, "sde": sde},
                                     "data": {"image_size": 32, "num_channels": 3, "centered": sde != "vesde"}})
    return get_model(cfg).to(device).train()


def seconds_per_image(model, batch: int, device: torch.device, reps: int, bf16: bool) -> float:
    x = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.rand(batch, device=device) * 10 + 0.1  # valid both as VP time labels and as VE sigmas

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, labels).float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (reps * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-batch", type=int, default=2)
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} CPU threads, "
          f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}\n")
    print("| model | params | device | batch | precision | s / image (fwd+bwd) |")
    print("|---|---|---|---|---|---|")
    runs = [] if args.skip_cpu else [("cpu", args.cpu_batch, False)]
    if torch.cuda.is_available():
        runs += [("cuda", args.gpu_batch, False), ("cuda", args.gpu_batch, True)]
    for name in CONFIGS:
        for dev, batch, bf16 in runs:
            device = torch.device(dev)
            model = build(name, device)
            n = sum(p.numel() for p in model.parameters())
            spi = seconds_per_image(model, batch, device, args.reps, bf16)
            print(f"| {name} | {n / 1e6:.1f}M | {dev} | {batch} | {'bf16 autocast' if bf16 else 'fp32'} | "
                  f"{spi:.4g} |", flush=True)


if __name__ == "__main__":
    main()
