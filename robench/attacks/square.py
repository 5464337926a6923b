"""robench's own Square Attack for Linf (Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search"), with a random square per example.

Random search on the margin of the true logit over the best other one: the point starts at vertical
stripes (each column of each channel at +eps or -eps), then each query proposes to set one square window,
per channel, to the lower or the upper end of the eps box, and keeps the proposal when the margin falls.
The window's side follows the paper's schedule (the fraction p of the image's pixels, from p_init, halved
after 10, 50, 200, 500, 1,000, 2,000, 4,000, 6,000 and 8,000 of 10,000 queries, rescaled to the budget). An
example stops querying once it is misclassified.

AutoAttack's implementation draws one window and one sign per query for the whole batch, so examples
attacked side by side see the same proposals. Here every example draws its own: each example's proposals
follow the same distribution as before, and copies of an example in one batch are independent runs. A
proposal that would leave the point unchanged (the window already at those ends) takes the opposite
signs, so no query is spent on a point already evaluated.
"""
from __future__ import annotations

import math

import torch

from .descent import closeness

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10,000 queries


def side(i: int, queries: int, p_init: float, h: int, w: int) -> int:
    """The window's side at query ``i`` of ``queries``."""
    p = p_init / 2 ** sum(int(i / queries * 10000) > t for t in HALVINGS)
    return min(max(round(math.sqrt(p * h * w)), 1), h, w)


@torch.no_grad()
def square_linf(model, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = 5000, p_init: float = 0.8,
                seed: int = 0) -> torch.Tensor:
    """The best point found for each example of ``x`` (N, C, H, W) within ``queries`` queries after the
    first: misclassified where the search succeeded, else the lowest margin reached."""
    n, c, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)

    def signs(*shape):
        return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(x.device, x.dtype)

    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    best = (x + eps * signs(n, c, 1, w)).clamp(lo, hi)
    margin = closeness(model(best), y)
    live = (margin > 0).nonzero()[:, 0]
    grid_h, grid_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    for i in range(queries):
        if len(live) == 0:
            break
        s, m = side(i, queries, p_init, h, w), len(live)
        top = torch.randint(0, h - s + 1, (m,), generator=gen).to(x.device)
        left = torch.randint(0, w - s + 1, (m,), generator=gen).to(x.device)
        window = (((grid_h >= top[:, None]) & (grid_h < top[:, None] + s))[:, None, :, None]
                  & ((grid_w >= left[:, None]) & (grid_w < left[:, None] + s))[:, None, None, :])
        up = signs(m, c, 1, 1) > 0
        cur, l, u = best[live], lo[live], hi[live]
        same = (torch.where(up, u, l) == cur).logical_or(~window).flatten(1).all(1)
        up = up ^ same.view(-1, 1, 1, 1)
        new = torch.where(window, torch.where(up, u, l), cur)
        mnew = closeness(model(new), y[live])
        better = mnew < margin[live]
        best[live[better]], margin[live[better]] = new[better], mnew[better]
        live = live[margin[live] > 0]
    return best
