"""Top-down drawing of CLEVR-Robot states with Pillow (no OpenGL needed), and GIF export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kalm.envs.clevr.constants import BALL_RADIUS, COLORS, RGBA, TABLE_HIGH, TABLE_LOW
from kalm.io import save_gif

__all__ = ["draw_state", "episode_gif", "save_gif"]

# World window drawn: the walls are at x = +-0.6, y = -0.3 / 0.7.
VIEW_LOW = np.array([-0.65, -0.35])
VIEW_HIGH = np.array([0.65, 0.75])
WALL_LOW = np.array([-0.6, -0.3])
WALL_HIGH = np.array([0.6, 0.7])


class _Canvas:
    def __init__(self, size: int) -> None:
        span = VIEW_HIGH - VIEW_LOW
        self.scale = size / float(span.max())
        self.w = round(span[0] * self.scale)
        self.h = round(span[1] * self.scale)

    def px(self, xy: Sequence[float]) -> tuple[float, float]:
        """World (x right, y up) to image pixels (+y drawn up)."""
        return (
            (xy[0] - VIEW_LOW[0]) * self.scale,
            (VIEW_HIGH[1] - xy[1]) * self.scale,
        )


def _rgb(colour: str) -> tuple[int, int, int]:
    r, g, b, _ = RGBA[colour]
    return int(r * 255), int(g * 255), int(b * 255)


def _dashed_rect(draw: ImageDraw.ImageDraw, c: _Canvas, low, high, fill, dash=6) -> None:
    (x0, y1), (x1, y0) = c.px(low), c.px(high)
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1),
                                     (y0, y1, False, x0), (y0, y1, False, x1)):
        pos = a
        while pos < b:
            end = min(pos + dash, b)
            pts = [(pos, fixed), (end, fixed)] if horizontal else [(fixed, pos), (fixed, end)]
            draw.line(pts, fill=fill, width=1)
            pos += 2 * dash


def draw_state(
    state: Sequence[float] | np.ndarray,
    size: int = 256,
    pusher: Sequence[float] | None = None,
    caption: str | None = None,
) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) of the table from above: walls, reachable area, balls."""
    s = np.asarray(state, dtype=np.float64).reshape(-1)
    c = _Canvas(size)
    img = Image.new("RGB", (c.w, c.h), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    (wx0, wy1), (wx1, wy0) = c.px(WALL_LOW), c.px(WALL_HIGH)
    draw.rectangle([wx0, wy0, wx1, wy1], outline=(60, 60, 60), width=2)
    _dashed_rect(draw, c, TABLE_LOW, TABLE_HIGH, fill=(150, 150, 150))
    r = BALL_RADIUS * c.scale
    for i, colour in enumerate(COLORS):
        x, y = c.px(s[2 * i : 2 * i + 2])
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_rgb(colour), outline=(30, 30, 30))
    if pusher is not None:
        x, y = c.px(pusher)
        pr = 0.05 * c.scale
        draw.ellipse([x - pr, y - pr, x + pr, y + pr], fill=(200, 200, 200), outline=(0, 0, 0))
    if caption:
        draw.text((4, 2), caption[:80], fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8)


def episode_gif(
    observations: np.ndarray, path: str | Path, caption: str | None = None,
    size: int = 256, fps: float = 2.0,
) -> Path:
    """Render every state of an episode (T+1, 10) and write the GIF."""
    frames = [draw_state(o, size=size, caption=caption) for o in observations]
    return save_gif(frames, path, fps=fps)
