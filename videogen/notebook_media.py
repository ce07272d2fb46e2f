"""Videos inline in notebooks (Jupyter, Colab): HTML that needs no video player or FFmpeg.

`videos_html` lays clips out side by side under their titles, each a looping GIF
(`video_grid.write_gif`) in a data URI, scaled to a display height with
nearest-neighbour so that a 32x32 clip stays sharp; show it with
``IPython.display.display(IPython.display.HTML(...))``. GIF rather than H.264:
4:2:0 chroma would halve the colour resolution of tiny clips and blur exactly the
errors a reconstruction grid is there to show. Sound: ``IPython.display.Audio``.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections.abc import Mapping

import numpy as np
from jaxtyping import UInt8

from videogen.evaluation import video_grid


def gif_bytes(frames: UInt8[np.ndarray, "T H W 3"], fps: float) -> bytes:
    """``frames`` as a looping GIF file's bytes (`video_grid.write_gif`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = video_grid.write_gif(os.path.join(tmp, "clip.gif"), frames, fps)
        with open(path, "rb") as f:
            return f.read()


def videos_html(
    videos: Mapping[str, UInt8[np.ndarray, "T H W 3"]], *, fps: float, height: int = 160
) -> str:
    """HTML of ``videos`` ({title: frames}) side by side, each ``height`` pixels high."""
    if not videos:
        raise ValueError("videos_html: got no videos; pass {title: uint8 [T, H, W, 3] frames}.")
    if height < 1:
        raise ValueError(f"videos_html: height must be positive, got {height}.")
    cells = []
    for title, frames in videos.items():
        data = base64.b64encode(gif_bytes(np.asarray(frames), fps)).decode("ascii")
        cells.append(
            '<td style="text-align:center;vertical-align:top;padding:4px">'
            f"<div>{html.escape(title)}</div>"
            f'<img src="data:image/gif;base64,{data}" style="height:{height}px;'
            'image-rendering:pixelated"></td>'
        )
    return f'<table style="border:none"><tr>{"".join(cells)}</tr></table>'
