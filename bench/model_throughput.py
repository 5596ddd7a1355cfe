"""EfficientLab forward+backward speed: NCHW vs channels-last, and how close it runs to a dense 3x3 convolution.

For EfficientLab-3 on the paper's encoder (tf_efficientnet_b0) at several image sizes, one training step's
forward+backward (train mode, the package's `segmentation_loss`, no optimizer) is timed for a model built with
`ModelConfig(channels_last=False)` fed NCHW inputs and one built with `channels_last=True` fed channels-last
inputs (same weights). The achieved GFLOP/s is compared with a dense 64->64 3x3 convolution (batch of 56x56 maps,
forward+backward) timed in the same rounds: "/conv" = model GFLOP/s / the conv's GFLOP/s in its faster format,
i.e. how well the network uses the machine. All variants run interleaved, round after round; times are medians
over rounds, ratios are medians of the per-round ratios (each round measures both sides back to back).

FLOPs are counted once per size with `torch.utils.flop_counter.FlopCounterMode` (forward + backward). torch
2.14's formula for `convolution_backward` ignores `groups` in the weight gradient, so every depthwise conv's
backward is overcounted by its channel count; this script counts each conv-backward output as one forward conv
(2 * N * output pixels * weight elements), which is exact, and prints the stock count next to it.

    python bench/model_throughput.py [--sizes 64 128 224] [--batch 8] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from math import prod

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fewshotseg.models.efficientlab import ModelConfig, build_model
from fewshotseg.models.losses import segmentation_loss

FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
MIN_SAMPLE_S = 0.25  # one timing sample repeats the step until it lasts at least this long


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """grad_input and grad_weight each cost one forward conv: 2 * N * output pixels * prod(weight shape)."""
    pixels = prod(x_shape[2:] if transposed else grad_out_shape[2:])
    forward = 2 * grad_out_shape[0] * pixels * prod(w_shape)  # w_shape is (out, in / groups, k, k)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn: Callable[[], None]) -> tuple[int, int]:
    """(exact FLOPs, torch's stock count) of one call of fn."""
    exact = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})
    with exact:
        fn()
    stock = FlopCounterMode(display=False)
    with stock:
        fn()
    return exact.get_total_flops(), stock.get_total_flops()


def model_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        segmentation_loss(model(x), y).backward()

    return step


def conv_step(conv: nn.Conv2d, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).sum().backward()

    return step


def calls_per_sample(fn: Callable[[], None]) -> int:
    """Warm up (two calls) and choose how many calls make one timing sample of at least MIN_SAMPLE_S."""
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, round(MIN_SAMPLE_S / max(once, 1e-6)))


def timed(fn: Callable[[], None], calls: int) -> float:
    """Seconds per call, over `calls` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def blobs(batch: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(B, S, S) int64 masks, one random disk each (a plausible foreground fraction for the IoU term)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    centre = 0.3 + 0.4 * torch.rand(batch, 2, generator=g)
    radius = 0.1 + 0.2 * torch.rand(batch, generator=g)
    d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    return (d2 < radius[:, None, None] ** 2).long()


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-round ratios a[i] / b[i]."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="tf_efficientnet_b0")
    parser.add_argument("--variant", default="efficientlab-3")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every measurement (default 1: on a shared 2-core machine a second "
                             "OpenMP thread stalls whenever another job holds the other core)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)

    models = {}
    for fmt in FORMATS:
        torch.manual_seed(args.seed)  # identical weights in both formats
        models[fmt] = build_model(ModelConfig(variant=args.variant, encoder=args.encoder,
                                              channels_last=fmt == "cl")).train()

    # One callable per (what, format): the model at each size, and the dense reference conv.
    steps: dict[tuple, Callable[[], None]] = {}
    flops: dict[object, tuple[int, int]] = {}
    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size, generator=g)
        y = blobs(args.batch, size, g)
        for fmt, memory_format in FORMATS.items():
            steps[(size, fmt)] = model_step(models[fmt], x.contiguous(memory_format=memory_format), y)
        flops[size] = count_flops(steps[(size, "nchw")])
    torch.manual_seed(args.seed)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    conv_x = torch.rand(args.batch, 64, 56, 56, generator=g)
    for fmt, memory_format in FORMATS.items():
        c = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=memory_format)
        c.load_state_dict(conv.state_dict())
        steps[("conv", fmt)] = conv_step(c, conv_x.contiguous(memory_format=memory_format).requires_grad_())
    flops["conv"] = count_flops(steps[("conv", "nchw")])

    calls = {key: calls_per_sample(fn) for key, fn in steps.items()}  # also the warm-up
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    for r in range(args.repeats):
        keys = list(steps) if r % 2 == 0 else list(reversed(steps))  # alternate the order as well
        for key in keys:
            times[key].append(timed(steps[key], calls[key]))

    def gflops(key: tuple) -> list[float]:
        return [flops[key[0]][0] / t / 1e9 for t in times[key]]

    conv_gflops = {fmt: statistics.median(gflops(("conv", fmt))) for fmt in FORMATS}
    conv_best = max(conv_gflops.values())
    print(f"{args.variant} / {args.encoder}, batch {args.batch}, forward+backward in train mode "
          f"(segmentation_loss); {args.threads} thread(s), {args.repeats} interleaved rounds, medians")
    print(f"dense 3x3 conv 64->64 on {args.batch}x56x56, fwd+bwd ({flops['conv'][0] / 1e9:.2f} GFLOP): "
          f"NCHW {conv_gflops['nchw']:.1f} GFLOP/s, channels-last {conv_gflops['cl']:.1f} GFLOP/s "
          f"(reference for /conv: {conv_best:.1f})")
    print()
    print(f"{'size':>5} {'GFLOP':>7} {'(stock)':>8} | {'NCHW ms':>8} {'GFLOP/s':>8} {'/conv':>6} | "
          f"{'CL ms':>8} {'GFLOP/s':>8} {'/conv':>6} | {'CL/NCHW speed':>13} {'(range)':>13}")
    speedups = {}
    for size in args.sizes:
        row = f"{size:5d} {flops[size][0] / 1e9:7.1f} {flops[size][1] / 1e9:8.1f} |"
        for fmt in FORMATS:
            ms = 1000 * statistics.median(times[(size, fmt)])
            rate = statistics.median(gflops((size, fmt)))
            row += f" {ms:8.0f} {rate:8.1f} {rate / conv_best:6.2f} |"
        med, low, high = paired(times[(size, "nchw")], times[(size, "cl")])
        speedups[size] = med
        print(row + f" {med:12.2f}x {f'{low:.2f}-{high:.2f}':>13}")
    print()
    print("GFLOP: exact forward+backward FLOPs per step; (stock): torch FlopCounterMode's count, which overcounts "
          "depthwise conv backward by the channel count")

    fastest, slowest = min(speedups.values()), max(speedups.values())
    span = f"{fastest:.2f}-{slowest:.2f}x the NCHW speed"
    if fastest >= 0.98 and slowest >= 1.05:
        verdict = f"keep channels-last the default (ModelConfig.channels_last=True): never slower, {span}"
    elif slowest <= 1.02 and fastest <= 0.95:
        verdict = f"make NCHW the default (ModelConfig.channels_last=False): channels-last runs at {span}"
    else:
        verdict = f"no clear winner (channels-last at {span}); re-measure on the target machine"
    print(f"verdict ({args.threads} thread(s)): {verdict}")


if __name__ == "__main__":
    main()
