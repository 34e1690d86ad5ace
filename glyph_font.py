"""
The glyphs' source and their on-disk cache, for glyph_embed.py.

The font: one pinned file everywhere, GNU Unifont 15.0.01 as Debian bookworm's fonts-unifont
1:15.0.01-2 ships it (unifont.otf, sha256 UNIFONT_SHA256), drawn by Pillow exactly as the released
builder draws it (docs/design.md section 2). find_font looks for it (an explicit path, the Debian file,
our cache) and otherwise downloads it: upstream's .otf if it is byte-identical, else the Debian
package, whose .otf otf_from_deb takes out without dpkg. Another font is used only when asked for.

The cache: entries are numpy arrays saved with the sha256 of their content (cache_save) and used
only when they match it (cache_load); a damaged entry is rebuilt, a failed write only costs the
time it would have saved (cache_write).

    from glyph_font import load_font
    font = load_font()                                   # the pinned Unifont, found or downloaded
    own, left, right = font.char_cells([ord("A")], 32)   # what "A" draws into its cell and beside it
"""
import hashlib
import io
import os
import sys
import tarfile

import numpy as np

from checkpoint import atomic_write
from data.download import cache_dir, download, sha256_file

UNIFONT_VERSION = "15.0.01"
UNIFONT_SHA256 = "db1960227adcb14640063e7384fdcd2867aaf819d9ca4866bca289d4db9a9f67"  # Debian's unifont.otf
UNIFONT_OTF_URL = f"https://ftpmirror.gnu.org/unifont/unifont-{UNIFONT_VERSION}/unifont-{UNIFONT_VERSION}.otf"
UNIFONT_DEB_URL = "https://deb.debian.org/debian/pool/main/u/unifont/fonts-unifont_15.0.01-2_all.deb"
UNIFONT_DEB_SHA256 = "cd46245f1b228d1277ed2b453ce893fde1cf4bf4ec317e82b0079395bdc9c2b5"
UNIFONT_DEB_MEMBER = "./usr/share/fonts/opentype/unifont/unifont.otf"
DEBIAN_UNIFONT = "/usr/share/fonts/opentype/unifont/unifont.otf"


# -----------------------------------------------------------------------------
# finding the pinned font

def otf_from_deb(deb, member=UNIFONT_DEB_MEMBER):
    """The bytes of one file inside a .deb (an ar archive holding data.tar.*), without dpkg."""
    with open(deb, "rb") as f:
        data = f.read()
    pos = 8  # "!<arch>\n", then 60-byte member headers, members padded to even length
    while pos + 60 <= len(data):
        name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tar:
                return tar.extractfile(member).read()
        pos += 60 + size + (size & 1)
    raise ValueError(f"{deb}: no data.tar member (not a Debian package?)")


def download_unifont(dest=None):
    """The pinned Unifont .otf into our cache (sha256 checked): GNU's mirror file if it is the pinned
    one, else the Debian package's. OSError (one line naming both URLs) when neither can be had."""
    dest = dest or os.path.join(cache_dir(), f"unifont-{UNIFONT_VERSION}.otf")
    errors = []
    try:
        return download(UNIFONT_OTF_URL, dest, sha256=UNIFONT_SHA256, what="GNU Unifont")
    except SystemExit as e:  # data/download.py's one line: offline, or upstream's build is not Debian's file
        errors.append(str(e))
    try:
        deb = download(UNIFONT_DEB_URL, dest + ".deb", sha256=UNIFONT_DEB_SHA256, what="GNU Unifont")
        otf = otf_from_deb(deb)
        if hashlib.sha256(otf).hexdigest() != UNIFONT_SHA256:
            raise ValueError(f"{deb}: unifont.otf inside has the wrong sha256")
        with atomic_write(dest, "wb") as f:
            f.write(otf)
        os.remove(deb)
        return dest
    except (SystemExit, ValueError, KeyError) as e:
        errors.append(str(e))
    raise OSError(f"could not download GNU Unifont {UNIFONT_VERSION}: {'; '.join(errors)}. Install the "
                  f"Debian package 'fonts-unifont', or pass an .otf path (--font / $GLYPHGPT_UNIFONT)")


def find_font(path=None):
    """An explicit path or $GLYPHGPT_UNIFONT (any font: the user asked for it), else the pinned
    Unifont: the Debian file if it is that file, our cache, else a download."""
    explicit = path or os.environ.get("GLYPHGPT_UNIFONT")
    if explicit:
        if not os.path.exists(explicit):
            raise FileNotFoundError(f"font file not found: {explicit}")
        return explicit
    cached = os.path.join(cache_dir(), f"unifont-{UNIFONT_VERSION}.otf")
    for p in (DEBIAN_UNIFONT, cached):
        if os.path.exists(p) and sha256_file(p) == UNIFONT_SHA256:
            return p
        if os.path.exists(p):
            print(f"note: {p} is not GNU Unifont {UNIFONT_VERSION} (sha256 {sha256_file(p)[:16]}), not used",
                  file=sys.stderr)
    return download_unifont()


# -----------------------------------------------------------------------------
# drawing one character as the builder draws it

class Font:
    """A font file drawn by Pillow at the size of the cell, one placed character at a time."""

    def __init__(self, path):
        from PIL import ImageFont
        self.path, self.sha256 = path, sha256_file(path)
        self.pinned = self.sha256 == UNIFONT_SHA256
        if not self.pinned:
            print(f"note: glyphs drawn with {path} (sha256 {self.sha256[:16]}), not the pinned GNU Unifont "
                  f"{UNIFONT_VERSION}: the table's substrate key says so", file=sys.stderr)
        try:
            ImageFont.truetype(path, 32)
        except OSError as e:
            raise ValueError(f"{path}: Pillow cannot read it as a font ({e}); expected GNU Unifont .otf") from None
        self._pillow, self._cells = {}, {}

    def pillow(self, size, layout="basic"):
        """Pillow's font at this size under one layout engine: "basic" (FreeType alone, the default and
        the one docs/design.md section 2's boxes are measured with) or "raqm" (libraqm: HarfBuzz shaping,
        which gives a lone combining mark an advance of 16 instead of 0 and refuses line-break
        characters). Pillow would pick raqm by itself wherever it is installed, so it is always named."""
        from PIL import ImageFont
        if (size, layout) not in self._pillow:
            check_layout(layout)
            engine = ImageFont.Layout.RAQM if layout == "raqm" else ImageFont.Layout.BASIC
            self._pillow[size, layout] = ImageFont.truetype(self.path, size, layout_engine=engine)
        return self._pillow[size, layout]

    def draw_char(self, ch, cell, layout="basic"):
        """The builder's drawing of one character in its cell, on a 3-cell-wide canvas so that ink
        spilling into the neighbouring cells (zero-advance combining marks) is kept: [cell, 3 cell]
        bool, True = ink. Pillow's box (l, t, r, b) is not the ink box (docs/design.md section 2)."""
        from PIL import Image, ImageDraw
        font = self.pillow(cell, layout)
        img = Image.new("L", (3 * cell, cell), color=255)
        try:  # what the builder does when Pillow refuses a character (raqm: line breaks): nothing drawn
            l, t, r, b = font.getbbox(ch)
            ImageDraw.Draw(img).text((cell + (cell - (r - l)) // 2, (cell - (b - t)) // 2 - t), ch, fill=0, font=font)
        except Exception:
            pass
        a = np.asarray(img)
        if ((a != 0) & (a != 255)).any():
            raise ValueError(f"{self.path}: U+{ord(ch):04X} is drawn with grey pixels; a bitmap font "
                             f"(Unifont) is needed for exact 1-bit glyphs")
        return a == 0

    def char_cells(self, cps, cell=32, layout="basic"):
        """(own [k, cell, cell], left [k, ...], right [k, ...]) uint8 1 = ink: what each code point
        draws into its own cell and into the cells left / right of it. Each character is drawn once
        per font, cell size and layout engine, and kept in the cache."""
        check_layout(layout)
        path = os.path.join(cache_dir(), "glyph", f"chars_{self.sha256[:16]}_c{cell}_{layout}.npz")
        have = self._cells.get((cell, layout))
        if have is None:
            have = cache_load(path)
            have = have or {"cps": np.zeros(0, np.int64), "cells": np.zeros((0, 3, cell * cell // 8), np.uint8)}
        cps = np.asarray(cps, dtype=np.int64)
        missing = np.setdiff1d(cps, have["cps"])
        if len(missing):
            drawn = np.stack([self.draw_char(chr(c), cell, layout).reshape(cell, 3, cell).transpose(1, 0, 2)
                              for c in missing.tolist()])
            allc = np.concatenate([have["cps"], missing])
            cells = np.concatenate([have["cells"], np.packbits(drawn.reshape(len(missing), 3, -1), axis=2)])
            order = np.argsort(allc)
            have = {"cps": allc[order], "cells": cells[order]}
            cache_save(path, have)
        self._cells[cell, layout] = have
        i = np.searchsorted(have["cps"], cps)
        c = np.unpackbits(have["cells"][i], axis=2).reshape(len(cps), 3, cell, cell)
        return c[:, 1], c[:, 0], c[:, 2]


LAYOUTS = ("basic", "raqm")  # Pillow's layout engines a table can be drawn with


def layout_available(layout):
    """Can this Pillow lay text out with layout (one of LAYOUTS)? raqm needs Pillow's libraqm support."""
    from PIL import features
    return layout != "raqm" or features.check("raqm")


def check_layout(layout):
    """ValueError (one line) unless layout is one of LAYOUTS and this Pillow can lay text out with it."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if not layout_available(layout):
        raise ValueError("layout=raqm: this Pillow has no libraqm support (PIL.features.check('raqm') is False); "
                         "Pillow's wheels bundle raqm but load FriBiDi at run time: install the Debian package "
                         "libfribidi0 (install.sh does), or build Pillow against libraqm")


_FONTS = {}


def load_font(path=None):
    """The Font of find_font(path), opened once per process."""
    p = find_font(path)
    if p not in _FONTS:
        _FONTS[p] = Font(p)
    return _FONTS[p]


# -----------------------------------------------------------------------------
# cache entries, verified by a digest of their content recorded when written

def content_digest(arrays):
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def cache_write(path, write):
    """Write one cache entry atomically with write(f) -> True. A failed write (a full disk, a
    read-only cache) is one warning naming the path -> False, and the run goes on: the entry would
    only have saved time, what was computed is in memory and correct."""
    try:
        with atomic_write(path, "wb") as f:
            write(f)
        return True
    except OSError as e:
        print(f"warning: could not write cache entry {path} ({e.strerror or e}); going on without it "
              f"(set $GLYPHGPT_CACHE to a folder with free space to keep it)", file=sys.stderr)
        return False


def cache_save(path, arrays):
    """numpy arrays -> path (.npz), with the sha256 of their content (cache_write)."""
    return cache_write(path, lambda f: np.savez(f, _digest=np.array(content_digest(arrays)), **arrays))


def cache_load(path):
    """The arrays of a cache entry, or None (absent; or damaged: then one line says so, to be rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "_digest"}
            if str(z["_digest"]) == content_digest(arrays):
                return arrays
        why = "content does not match its recorded digest"
    except Exception as e:  # truncated, not a zip, missing digest ...
        why = f"unreadable ({type(e).__name__})"
    print(f"warning: cache entry {path}: {why}; rebuilding it", file=sys.stderr)
    return None
