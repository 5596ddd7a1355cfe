"""How far adaptation moves each initialization (paper App. G): distances between theta and theta_tau per block.

    d1 = ||v - u||_2                      Euclidean distance (also over the whole network)
    d2 = || v/||v|| - u/||u|| ||_2        distance of the unit-normalised vectors: change of direction
    d3 = mean_i |v_i - u_i|               mean absolute change of one parameter

where v is a block's parameters at the initialization unrolled into a vector and u the same after U adapted it to
a task. A block is the stem, one encoder block (MBConv), one decoder module (RSD) or the head, in network order.

The `analyze-weights` command (evaluation/analyze_weights.py) adapts initializations to tasks and writes these
distances to a run folder; this module only computes from weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch


def block_of(name: str) -> str:
    """The App. G block a parameter belongs to, from its name."""
    if name.startswith("encoder."):
        match = re.match(r"encoder\.body\.blocks\.(\d+)\.(\d+)\.", name)
        return f"encoder.block{match.group(1)}.{match.group(2)}" if match else "encoder.stem"
    if name.startswith("decoder."):
        match = re.match(r"decoder\.rsd\.(\d+)\.", name)
        return f"decoder.rsd{match.group(1)}" if match else "decoder"
    return "head"


def group_blocks(names: list[str]) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    for name in names:
        blocks.setdefault(block_of(name), []).append(name)
    return blocks


def distances(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
              blocks: Mapping[str, list[str]]) -> dict[str, dict[str, float]]:
    """{block: {d1, d2, d3}} plus "network": {d1} for two parameter sets with the same names."""
    out = {}
    for block, names in blocks.items():
        v = torch.cat([before[n].detach().double().reshape(-1) for n in names])
        u = torch.cat([after[n].detach().double().reshape(-1) for n in names])
        out[block] = {
            "d1": float(torch.linalg.vector_norm(v - u)),
            "d2": float(torch.linalg.vector_norm(v / torch.linalg.vector_norm(v) - u / torch.linalg.vector_norm(u))),
            "d3": float((v - u).abs().mean()),
        }
    all_names = [n for names in blocks.values() for n in names]
    v = torch.cat([before[n].detach().double().reshape(-1) for n in all_names])
    u = torch.cat([after[n].detach().double().reshape(-1) for n in all_names])
    out["network"] = {"d1": float(torch.linalg.vector_norm(v - u))}
    return out
