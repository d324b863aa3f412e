#!/usr/bin/env python3
"""Pillow's PNG writer on the engine benchmark's test images: what a diffusers user pays per image.

    cargo bench --profile dev -p fleet-engine --bench engine -- --encode --save-raw /tmp/raw
    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow
    /tmp/pil/bin/python bench/png_encode_pillow.py /tmp/raw

Times `Image.save(format="PNG")` at compress_level 1, 4 (ComfyUI's SaveImage), 6 (Pillow's default,
what `pipe(...).images[0].save("x.png")` does) and 9, fastest of three, one thread, on the same
pixels the Rust side encoded (`<name>-<w>x<h>.rgb`, 8-bit RGB).
"""
import io
import pathlib
import sys
import time
import zlib

import PIL
from PIL import Image


def main() -> None:
    directory = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/raw")
    files = sorted(directory.glob("*.rgb"))
    if not files:
        sys.exit(f"no <name>-<w>x<h>.rgb files in {directory}: run the engine benchmark with --encode --save-raw first")
    print(f"Pillow {PIL.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}; fastest of 3, one thread")
    print(f"{'image':<16} {'format':<24} {'ms':>10} {'KiB':>10} {'of raw':>7} {'ms/MP':>8}")
    for path in files:
        name, size = path.stem.rsplit("-", 1)
        width, height = (int(n) for n in size.split("x"))
        raw = path.read_bytes()
        img = Image.frombytes("RGB", (width, height), raw)
        for level in (1, 4, 6, 9):
            best, encoded = float("inf"), 0
            for _ in range(3):
                buf = io.BytesIO()
                started = time.perf_counter()
                img.save(buf, format="PNG", compress_level=level)
                best = min(best, time.perf_counter() - started)
                encoded = buf.tell()
            label = f"PNG compress_level {level}"
            per_megapixel = best * 1e3 * 3e6 / len(raw)
            print(f"{name:<16} {label:<24} {best * 1e3:>10.1f} {encoded / 1024:>10.0f} {encoded / len(raw):>7.3f} {per_megapixel:>8.1f}")


if __name__ == "__main__":
    main()
