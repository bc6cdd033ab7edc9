"""A schematic of a 91-d Meta-World state with Pillow: top view (x, y) and side view (y, z).

Drawn from the state alone (no OpenGL, no simulator), so imagined states render exactly like
real ones and `kalm render` works on any machine: the table, the target (ring), the tcp with
its opening (cross), and every present entity as a labelled dot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from kalm.envs.metaworld.constants import ENTITIES, ENTITY_POS, ENTITY_SLICE, HAND, OPENING, TARGET

X_VIEW, Y_VIEW, Z_VIEW = (-0.55, 0.55), (0.25, 1.05), (-0.05, 0.55)
COLOURS = {
    "target_object": (200, 60, 60), "button": (220, 130, 30), "lock": (120, 80, 160),
    "handle": (90, 60, 30), "window": (60, 140, 200), "faucet": (40, 150, 150),
    "wall": (110, 110, 110), "coffee": (150, 90, 40), "coffee_button": (230, 60, 140),
    "hammer": (60, 60, 60), "nail": (160, 160, 40), "soccer": (30, 30, 30),
}


def draw_state(state: Sequence[float] | np.ndarray, size: int = 256,
               caption: str | None = None) -> np.ndarray:
    """An RGB uint8 image (size x size) of the state; the caption is printed at the bottom."""
    s = np.asarray(state, dtype=np.float64).reshape(-1)
    if s.shape[0] != len(ENTITIES) * 7 + 7:
        raise ValueError(f"a Meta-World state has 91 values, got {s.shape[0]}")
    img = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    top_w = int(size * 0.6)
    panel_h = size - 24

    def top(x: float, y: float) -> tuple[float, float]:
        u = (x - X_VIEW[0]) / (X_VIEW[1] - X_VIEW[0]) * (top_w - 8) + 4
        v = (Y_VIEW[1] - y) / (Y_VIEW[1] - Y_VIEW[0]) * (panel_h - 8) + 4
        return u, v

    def side(y: float, z: float) -> tuple[float, float]:
        u = top_w + (y - Y_VIEW[0]) / (Y_VIEW[1] - Y_VIEW[0]) * (size - top_w - 8) + 4
        v = (Z_VIEW[1] - z) / (Z_VIEW[1] - Z_VIEW[0]) * (panel_h - 8) + 4
        return u, v

    draw.rectangle([*top(-0.5, 1.0), *top(0.5, 0.3)], fill=(225, 215, 195))  # table top
    draw.line([side(0.2, 0.0), side(1.0, 0.0)], fill=(120, 100, 80), width=2)
    draw.line([(top_w, 0), (top_w, panel_h)], fill=(180, 180, 180))
    r = max(2, size // 64)

    def dot(p: tuple[float, float], colour: tuple[int, int, int], rad: int = r) -> None:
        draw.ellipse([p[0] - rad, p[1] - rad, p[0] + rad, p[1] + rad], fill=colour)

    def ring(p: tuple[float, float], colour: tuple[int, int, int], rad: int) -> None:
        draw.ellipse([p[0] - rad, p[1] - rad, p[0] + rad, p[1] + rad], outline=colour, width=2)

    t = s[TARGET]
    ring(top(t[0], t[1]), (0, 160, 0), 2 * r)
    ring(side(t[1], t[2]), (0, 160, 0), 2 * r)
    for e in ENTITIES:
        if not np.any(s[ENTITY_SLICE[e]]):
            continue
        x, y, z = s[ENTITY_POS[e]]
        dot(top(x, y), COLOURS[e])
        dot(side(y, z), COLOURS[e])
        draw.text((top(x, y)[0] + r + 1, top(x, y)[1] - r), e.replace("_", " "),
                  fill=COLOURS[e])
    h = s[HAND]
    arm = int(r + 2 * r * float(np.clip(s[OPENING], 0, 1)))  # wider cross: open gripper
    for p in (top(h[0], h[1]), side(h[1], h[2])):
        draw.line([(p[0] - arm, p[1]), (p[0] + arm, p[1])], fill=(0, 0, 200), width=2)
        draw.line([(p[0], p[1] - arm), (p[0], p[1] + arm)], fill=(0, 0, 200), width=2)
    if caption:
        draw.text((4, size - 20), caption[: max(10, size // 6)], fill=(20, 20, 20))
    return np.asarray(img, dtype=np.uint8)
