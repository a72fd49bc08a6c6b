"""Exponential moving average of a model's weights (`imgscan train --ema DECAY`).

Why: on this project's small data a seed moves every proxy by several points (docs/training.md), i.e. where
training stops on its noisy path matters. An average of the weights over the last part of the path is a
flatter, less seed-dependent point (Polyak averaging; Izmailov et al. 2018 "SWA"; timm's ModelEma).

    ema <- d_t * ema + (1 - d_t) * weights      after every optimizer step t = 1, 2, ...
    d_t  = min(DECAY, (1 + t) / (10 + t))       (TensorFlow's ExponentialMovingAverage with num_updates)

The ramp d_t keeps the random head of the first steps from lingering in the average: with a fixed d = 0.999 the
initial weights would still weigh d^T (5 % after 3,000 steps). Floating-point buffers (BatchNorm running mean
and variance) are averaged the same way; integer buffers (num_batches_tracked) are copied. The average never
feeds back into training: a run with --ema follows the same path as one without, step for step.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = source[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(new.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(new)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.module.load_state_dict(state["module"])
