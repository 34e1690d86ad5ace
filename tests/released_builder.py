"""The released glyph builder's loop, re-implemented independently of glyph_embed.py (Pillow
drawing the pinned Unifont OTF token by token, as the notebook does): the reference that
tests/test_glyph.py checks our bitmaps against and bench/bench_glyph.py times our batched path against."""
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from glyph_font import load_font


def builder_render(text, pil_font, cell=32, constants=(4, 2, 0.01)):
    """The released notebook's loop for one token, written out as it stands there: draw every
    character at its getbbox placement, augment_image, resize to one cell."""
    img = Image.new("L", (cell * len(text), cell), color=255)
    draw = ImageDraw.Draw(img)
    for i, char in enumerate(text):
        try:
            bbox = pil_font.getbbox(char)
            w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
            draw.text((i * cell + (cell - w) // 2, (cell - h) // 2 - bbox[1]), char, fill=0, font=pil_font)
        except Exception:
            pass
    easy = all(ord(c) <= 0x24F or 0x370 <= ord(c) <= 0x3FF or 0x400 <= ord(c) <= 0x58F for c in text)
    random.seed(42)
    np.random.seed(42)
    R, S, p = constants if easy else (0, 0, 0.001)
    angle = random.uniform(-R, R)
    img = img.rotate(angle, expand=0, fillcolor=255)
    dx, dy = random.randint(-S, S), random.randint(-S, S)
    shifted = Image.new("L", img.size, color=255)
    shifted.paste(img, (dx, dy))
    a = np.array(shifted)
    a[np.random.rand(*a.shape) < p] = 0
    img = Image.fromarray(a)
    if easy:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.5))
    bw = img.point(lambda v: 0 if v < 128 else 255, mode="1")
    if bw.size != (cell, cell):
        bw = bw.resize((cell, cell), Image.BILINEAR)
    return (np.array(bw) == 0).astype(np.uint8)


def builder_font(size, layout="basic"):
    """The builder's ImageFont.truetype(font, size) under a named layout engine: "basic" (Pillow
    without libraqm, whose boxes are docs/design.md section 2's: U+0301 has box (-12, 0, 0, 28)) or
    "raqm" (what Pillow picks by itself where libraqm is installed)."""
    engine = {"basic": ImageFont.Layout.BASIC, "raqm": ImageFont.Layout.RAQM}[layout]
    return ImageFont.truetype(load_font().path, size, layout_engine=engine)
