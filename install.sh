#!/usr/bin/env bash
# Installs everything glyphgpt needs on a fresh Debian machine with Python 3.11.
# Usage: bash install.sh          (runtime)      bash install.sh test   (runtime + test tools)
set -euo pipefail
cd "$(dirname "$0")"
# Debian packages:
#  - fonts-unifont: GNU Unifont 15.0.01 is the glyph source (.otf, drawn through Pillow as the released
#    builder drew it). Without it glyph_embed.py downloads exactly that file (sha256-checked).
#  - libfribidi0: Pillow's wheels bundle libraqm but load FriBiDi at run time; without it Pillow has
#    no raqm layout and glyph tables with layout=raqm are refused (the default, basic, needs nothing).
pkgs=()
[ -f /usr/share/fonts/opentype/unifont/unifont.otf ] || pkgs+=(fonts-unifont)
ldconfig -p 2>/dev/null | grep -q 'libfribidi\.so\.0' || pkgs+=(libfribidi0)
if [ ${#pkgs[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  # A fresh container has empty package lists: refresh them first, or apt cannot locate the packages.
  if ! $SUDO apt-get update -qq; then
    echo "install.sh: apt-get update failed (no package mirror reachable?)"
  elif ! $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; then
    echo "install.sh: apt-get install ${pkgs[*]} failed; glyph_embed.py will download Unifont 15.0.01," \
         "and layout=raqm needs libfribidi0"
  fi
fi
req=requirements.txt
[ "${1:-}" = test ] && req=requirements-test.txt
# not -q: a first install takes minutes, and pip's lines (and its bar, on a terminal) show it moving
python3 -m pip install -r "$req"
