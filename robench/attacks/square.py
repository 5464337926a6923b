"""robench's own Square Attack (Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search") for Linf and L2, with a random square per
example.

Random search on the margin of the true logit over the best other one: each query proposes a change of the
point inside a square window and keeps it when the margin falls. The window's side follows the paper's
schedule (the fraction p of the image's pixels, from p_init, halved after 10, 50, 200, 500, 1,000, 2,000,
4,000, 6,000 and 8,000 of 10,000 queries, rescaled to the budget). An example stops querying once it is
misclassified.

Linf: the point starts at vertical stripes (each column of each channel at +eps or -eps); a proposal sets
the window, per channel, to the lower or the upper end of the eps box. A proposal that would leave the point
unchanged (the window already at those ends) takes the opposite signs, so no query re-evaluates a point.

L2: the perturbation starts as a grid of tiles, each holding the paper's pseudo-Gaussian bump (concentric
square rings whose weight grows towards the centre) with a random sign per channel, scaled to norm eps. A
proposal draws a second window as well and, per channel, moves into the first the mass the two windows
hold plus an even share of what the perturbation outside them leaves of the eps budget. Its new content is
the direction it had plus, at equal weight, a random-signed pair of opposite bumps side by side (split down
or across the window at random), rescaled to that mass; the second window is cleared. The whole
perturbation is then rescaled to norm eps (what the [0, 1] box clipped is spread again) and the point goes
back into the box.

AutoAttack's implementation draws one window (and at Linf one sign) per query for the whole batch, so
examples attacked side by side see the same proposals. Here every example draws its own: each example's
proposals follow the same distribution as before, and copies of an example in one batch are independent
runs.
"""

from __future__ import annotations

import functools
import math

import torch

from ..errors import unknown
from ..norms import get_norm
from .descent import closeness

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10,000 queries


def side(i: int, queries: int, p_init: float, h: int, w: int, least: int = 1) -> int:
    """The window's side at query ``i`` of ``queries`` (at least ``least``, at most the image)."""
    p = p_init / 2 ** sum(int(i / queries * 10000) > t for t in HALVINGS)
    return min(max(round(math.sqrt(p * h * w)), least), h, w)


class _Draws:
    """The random draws of one search, from one seeded CPU generator, moved to the examples' device."""

    def __init__(self, seed: int, like: torch.Tensor):
        self.gen, self.like = torch.Generator().manual_seed(seed), like

    def signs(self, *shape) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=self.gen) * 2 - 1).to(self.like.device, self.like.dtype)

    def ints(self, high: int, m: int) -> torch.Tensor:
        return torch.randint(0, high, (m,), generator=self.gen).to(self.like.device)


def _inside(lo_r, lo_c, rows, cols, h, w, device) -> torch.Tensor:
    """(m, 1, h, w): each example's rectangle of ``rows`` x ``cols`` pixels from (``lo_r``, ``lo_c``)."""
    r, c = torch.arange(h, device=device), torch.arange(w, device=device)
    return ((r >= lo_r[:, None]) & (r < lo_r[:, None] + rows))[:, None, :, None] & (
        (c >= lo_c[:, None]) & (c < lo_c[:, None] + cols)
    )[:, None, None, :]


def _bump(r: torch.Tensor, c: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The pseudo-Gaussian weight at offsets ``r``, ``c`` (broadcast) from a rows x cols rectangle's corner:
    the ring k squares in from the rectangle's edge weighs the sum of 1/j^2 for j from the ring's index
    counted from the centre, plus one, to the outermost ring's, plus one."""
    cr, cc = (rows - 1) / 2, (cols - 1) / 2
    ring = torch.maximum((r - cr).abs(), (c - cc).abs()).floor().long()
    outer = int(max(cr, cc))
    weights = torch.tensor([sum(1 / j**2 for j in range(k + 1, outer + 2)) for k in range(outer + 1)], device=r.device)
    return weights[ring.clamp(0, outer)]


def _scaled(d: torch.Tensor, eps: float) -> torch.Tensor:
    """``d`` rescaled to L2 norm ``eps``, per example."""
    return d * (eps / d.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)


class _LinfSearch:
    least = 1

    def start(self, x, eps, draws):
        n, c, _, w = x.shape
        return x + eps * draws.signs(n, c, 1, w)

    def propose(self, cur, x, eps, s, draws):
        m, c, h, w = cur.shape
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        window = _inside(draws.ints(h - s + 1, m), draws.ints(w - s + 1, m), s, s, h, w, cur.device)
        up = draws.signs(m, c, 1, 1) > 0
        same = (torch.where(up, hi, lo) == cur).logical_or(~window).flatten(1).all(1)
        up = up ^ same.view(-1, 1, 1, 1)
        return torch.where(window, torch.where(up, hi, lo), cur)


class _L2Search:
    least = 3  # room for two bumps side by side with a centre each

    def start(self, x, eps, draws):
        n, c, h, w = x.shape
        t = max(min(h, w) // 5, 1)
        r, col = torch.arange(h, device=x.device)[:, None], torch.arange(w, device=x.device)[None, :]
        tiles = _bump(r % t, col % t, t, t) * ((r < h // t * t) & (col < w // t * t))
        signs = draws.signs(n, c, h // t, w // t).repeat_interleave(t, 2).repeat_interleave(t, 3)
        d = torch.zeros_like(x)
        d[:, :, : h // t * t, : w // t * t] = signs
        d = d * tiles
        return x + _scaled(d, eps)

    def propose(self, cur, x, eps, s, draws):
        m, c, h, w = cur.shape
        dev, d = cur.device, cur - x
        top, left = draws.ints(h - s + 1, m), draws.ints(w - s + 1, m)
        first = _inside(top, left, s, s, h, w, dev)
        both = first | _inside(draws.ints(h - s + 1, m), draws.ints(w - s + 1, m), s, s, h, w, dev)
        left_over = (eps**2 - (d * ~both).flatten(1).pow(2).sum(1)).clamp_min(0)  # eps^2 minus the rest's
        mass = ((d * both).pow(2).sum((2, 3)) + left_over[:, None] / c).sqrt()[:, :, None, None]  # (m, c, 1, 1)
        # a pair of opposite bumps in the first window, split down it or, at random, across it
        pairs = _pairs(s, dev, cur.dtype)[(draws.signs(m) > 0).long()]  # (m, s, s)
        at = (
            (top[:, None] + torch.arange(s, device=dev))[:, :, None] * w
            + (left[:, None] + torch.arange(s, device=dev))[:, None, :]
        ).view(m, -1)
        pair = torch.zeros(m, h * w, device=dev, dtype=cur.dtype).scatter_(1, at, pairs.view(m, -1))
        pair = pair.view(m, 1, h, w) * draws.signs(m, c, 1, 1)
        old = d * first
        new = old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) + pair
        new = new * (mass / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12))
        d = torch.where(first, new, torch.where(both, torch.zeros_like(d), d))
        return x + _scaled(d, eps)


@functools.lru_cache(maxsize=64)
def _pairs(s: int, device, dtype) -> torch.Tensor:
    """(2, s, s): a bump and its negative side by side, split across the window (rows) then down it
    (columns), each of unit norm."""
    r, c = torch.arange(s).view(s, 1), torch.arange(s).view(1, s)
    half = (s + 1) // 2
    across = torch.where(r < half, _bump(r, c, half, s), -_bump(r - half, c, s - half, s))
    down = torch.where(c < half, _bump(r, c, s, half), -_bump(r, c - half, s, s - half))
    out = torch.stack([across, down])
    return (out / out.flatten(1).norm(dim=1).view(2, 1, 1)).to(device, dtype)


SEARCHES = {"Linf": _LinfSearch(), "L2": _L2Search()}


@torch.no_grad()
def square(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    queries: int = 5000,
    p_init: float = 0.8,
    seed: int = 0,
) -> torch.Tensor:
    """The best point found for each example of ``x`` (N, C, H, W) within ``queries`` queries after the
    first: misclassified where the search succeeded, else the lowest margin reached."""
    name = get_norm(norm).name
    if name not in SEARCHES:
        raise unknown("Square norm", name, list(SEARCHES))
    search, draws = SEARCHES[name], _Draws(seed, x)
    _, _, h, w = x.shape
    best = search.start(x, eps, draws).clamp(0, 1)
    margin = closeness(model(best), y)
    live = (margin > 0).nonzero()[:, 0]
    for i in range(queries):
        if len(live) == 0:
            break
        s = side(i, queries, p_init, h, w, search.least)
        new = search.propose(best[live], x[live], eps, s, draws).clamp(0, 1)
        mnew = closeness(model(new), y[live])
        better = mnew < margin[live]
        best[live[better]], margin[live[better]] = new[better], mnew[better]
        live = live[margin[live] > 0]
    return best
