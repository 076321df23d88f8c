#!/usr/bin/env bash
# Rebuilds every example:
#   - to WebAssembly (WASI preview 1 command) in examples/wasm/<name>.wasm,
#     the committed artefacts that the sandbox tests run;
#   - natively with gcc in target/examples-native/<name> (not committed), so
#     that the two builds' outputs can be compared (done at the end).
#
# Needs (Debian/Ubuntu): clang lld wasi-libc libclang-rt-dev-wasm32 (or the
# versioned libclang-rt-<N>-dev-wasm32 matching your clang), plus gcc for the
# native build. This script installs nothing.
#
# Environment: CLANG (default clang), WASI_TARGET (default: wasm32-wasip1 if
# clang knows it, else wasm32-wasi), WASI_SYSROOT (default: none, which works
# with Debian's multiarch wasi-libc; set it for a wasi-sdk style sysroot),
# CC_NATIVE (default gcc).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
examples=(primes mandelbrot sha256chain train)
CLANG="${CLANG:-clang}"
CC_NATIVE="${CC_NATIVE:-gcc}"
native_dir="$root/target/examples-native"

missing() {
    echo "error: $1" >&2
    echo "install the WebAssembly toolchain, e.g. on Debian/Ubuntu:" >&2
    echo "  apt-get install clang lld wasi-libc libclang-rt-dev-wasm32" >&2
    echo "(on Debian 12 the builtins package is libclang-rt-14-dev-wasm32)" >&2
    exit 1
}

command -v "$CLANG" >/dev/null || missing "$CLANG not found"

sysroot_flags=()
if [[ -n "${WASI_SYSROOT:-}" ]]; then
    sysroot_flags=(--sysroot="$WASI_SYSROOT")
fi

probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
printf '#include <stdio.h>\nint main(void){puts("ok");return 0;}\n' >"$probe/probe.c"
target="${WASI_TARGET:-}"
if [[ -z "$target" ]]; then
    for t in wasm32-wasip1 wasm32-wasi; do
        if "$CLANG" --target="$t" "${sysroot_flags[@]}" -O2 "$probe/probe.c" -o "$probe/probe.wasm" 2>/dev/null; then
            target="$t"
            break
        fi
    done
    [[ -n "$target" ]] || missing "$CLANG cannot build for wasm32-wasi (missing wasm-ld, wasi-libc or the wasm32 compiler-rt builtins)"
fi

mkdir -p "$here/wasm" "$native_dir"
cflags=(-O2 -std=c11 -Wall -Wextra -Werror -ffp-contract=off)
for name in "${examples[@]}"; do
    src="$here/$name/$name.c"
    echo "wasm   $name -> examples/wasm/$name.wasm ($target)"
    "$CLANG" --target="$target" "${sysroot_flags[@]}" "${cflags[@]}" \
        -Wl,--strip-all "$src" -o "$here/wasm/$name.wasm"
    chmod 644 "$here/wasm/$name.wasm"
    if command -v "$CC_NATIVE" >/dev/null; then
        echo "native $name -> target/examples-native/$name"
        "$CC_NATIVE" "${cflags[@]}" "$src" -o "$native_dir/$name"
    else
        echo "warning: $CC_NATIVE not found, skipping the native build of $name" >&2
    fi
done

# Cross-check: when a WASI runtime is on PATH, compare native and wasm output.
runner=""
if command -v wasmtime >/dev/null; then
    runner="wasmtime run"
elif command -v wasmer >/dev/null; then
    runner="wasmer run"
fi
if [[ -n "$runner" ]] && command -v "$CC_NATIVE" >/dev/null; then
    for case in "primes:100000" "mandelbrot:64 48 200" "sha256chain:1000
abc"; do
        name="${case%%:*}"
        input="${case#*:}"
        a="$(printf '%s' "$input" | "$native_dir/$name" | sha256sum)"
        b="$(printf '%s' "$input" | $runner "$here/wasm/$name.wasm" | sha256sum)"
        if [[ "$a" != "$b" ]]; then
            echo "error: native and wasm outputs of $name differ" >&2
            exit 1
        fi
        echo "same   $name native vs wasm"
    done
else
    echo "(no wasmtime/wasmer on PATH: native vs wasm comparison left to 'cargo test -p agora-exec --test examples')"
fi
ls -l "$here"/wasm/*.wasm
