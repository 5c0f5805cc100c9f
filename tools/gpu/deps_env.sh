# Sourced on the GPU machine: unpacks .gpu-deps/debs (tools/gpu/pack_deps.sh) into a prefix with
# dpkg -x and points CMake, pkg-config, the compiler and the loader at it.
#   source tools/gpu/deps_env.sh   ->  QTRAIN_DEPS_PREFIX, CMAKE_PREFIX_PATH, PKG_CONFIG_PATH, ...
qtrain_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
QTRAIN_DEPS_PREFIX="${QTRAIN_DEPS_PREFIX:-/tmp/qtrain-deps}"
if [[ ! -f "$QTRAIN_DEPS_PREFIX/.unpacked" ]]; then
  shopt -s nullglob
  debs=("$qtrain_root"/.gpu-deps/debs/*.deb)
  if ((${#debs[@]} == 0)); then
    echo "deps_env: no .debs in $qtrain_root/.gpu-deps/debs (run tools/gpu/pack_deps.sh here and" \
      "carry .gpu-deps)" >&2
    return 4 2>/dev/null || exit 4
  fi
  mkdir -p "$QTRAIN_DEPS_PREFIX"
  for deb in "${debs[@]}"; do dpkg -x "$deb" "$QTRAIN_DEPS_PREFIX"; done
  # pkg-config files name prefix=/usr; CMake package files compute their prefix themselves.
  find "$QTRAIN_DEPS_PREFIX" -name '*.pc' -exec sed -i "s#=/usr#=$QTRAIN_DEPS_PREFIX/usr#" {} +
  # Debian's -dev packages link lib*.so to the versioned library with absolute paths sometimes.
  for link in "$QTRAIN_DEPS_PREFIX"/usr/lib/x86_64-linux-gnu/*.so; do
    target="$(readlink "$link" || true)"
    [[ "$target" == /* ]] && ln -sf "$QTRAIN_DEPS_PREFIX$target" "$link"
  done
  touch "$QTRAIN_DEPS_PREFIX/.unpacked"
fi
deps_usr="$QTRAIN_DEPS_PREFIX/usr"
export CMAKE_PREFIX_PATH="$deps_usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PKG_CONFIG_PATH="$deps_usr/lib/x86_64-linux-gnu/pkgconfig:$deps_usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export CPATH="$deps_usr/include${CPATH:+:$CPATH}"
export LIBRARY_PATH="$deps_usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$deps_usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$deps_usr/bin:$PATH"
