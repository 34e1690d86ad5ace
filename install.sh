#!/usr/bin/env bash
# Installs everything glyphgpt needs on a fresh Debian machine with Python 3.11.
# Usage: bash install.sh          (runtime)      bash install.sh test   (runtime + test tools)
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f /usr/share/unifont/unifont.hex ]; then
  # GNU Unifont's .hex bitmaps are the glyph source; without them glyph_embed.py downloads the font.
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends unifont >/dev/null || \
    echo "install.sh: could not install Debian unifont; glyph_embed.py will download the font instead"
fi
req=requirements.txt
[ "${1:-}" = test ] && req=requirements-test.txt
python3 -m pip install -q -r "$req"
