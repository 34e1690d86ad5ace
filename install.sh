#!/usr/bin/env bash
# Installs everything glyphgpt needs on a fresh Debian machine with Python 3.11.
# Usage: bash install.sh          (runtime)      bash install.sh test   (runtime + test tools)
set -euo pipefail
cd "$(dirname "$0")"
# GNU Unifont 15.0.01 is the glyph source: Debian bookworm's `fonts-unifont` (.otf, drawn through Pillow
# as the released builder drew it). Without it glyph_embed.py downloads exactly that file (sha256-checked).
if [ ! -f /usr/share/fonts/opentype/unifont/unifont.otf ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  # A fresh container has empty package lists: refresh them first, or apt cannot locate the package.
  if ! $SUDO apt-get update -qq; then
    echo "install.sh: apt-get update failed (no package mirror reachable?)"
  elif ! $SUDO apt-get install -y -qq --no-install-recommends fonts-unifont >/dev/null; then
    echo "install.sh: apt-get install fonts-unifont failed; glyph_embed.py will download Unifont 15.0.01"
  fi
fi
req=requirements.txt
[ "${1:-}" = test ] && req=requirements-test.txt
python3 -m pip install -q -r "$req"
