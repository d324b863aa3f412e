#!/usr/bin/env python3
"""Reads a finished `fleet bulk` run with the dataset libraries people train from, and checks
every sample's image, caption and metadata against the run's own manifests.

    python3 tools/check_readers.py OUT_DIR --expect N

- WebDataset layout (`NNNNN.tar`): through `webdataset.WebDataset` and through Hugging Face
  `datasets.load_dataset("webdataset", ...)`;
- `--format files` (`NNNNN/KEY.png` + `metadata.jsonl`): through
  `datasets.load_dataset("imagefolder", ...)`.

Each sample must decode to an image of the recorded width and height whose bytes have the
recorded SHA-256 (where the reader hands out bytes), carry the prompt as its caption and the
manifest row as its metadata, and every succeeded sample of the manifests must be read exactly
once. Needs `pip install webdataset datasets pillow`; `scripts/check-readers.sh` makes a small run
of each layout and runs this on them. Exit 0 when everything holds.
"""

import argparse
import glob
import hashlib
import io
import json
import os
import sys

IMAGE_EXTS = ("png", "jpg", "webp")
# What a reader that parses the metadata must give back as recorded.
METADATA_FIELDS = ("key", "prompt", "seed", "model", "steps", "width", "height", "sha256", "bytes")


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def manifest_rows(out):
    """key -> manifest row of every succeeded sample, over all shards."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(out, "[0-9]*_manifest.jsonl"))):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if row["status"] == "succeeded":
                        if row["key"] in rows:
                            fail(f"{path}: key {row['key']} appears twice")
                        rows[row["key"]] = row
    if not rows:
        fail(f"no succeeded samples in the manifests of {out}")
    return rows


def check_image(where, image, row, raw=None):
    """`image`: a PIL image; `raw`: its encoded bytes, when the reader gives them."""
    if image.size != (row["width"], row["height"]):
        fail(f"{where}: image is {image.size}, the record says {row['width']}x{row['height']}")
    if raw is not None and hashlib.sha256(raw).hexdigest() != row["sha256"]:
        fail(f"{where}: image bytes do not match the recorded sha256")


def image_field(sample):
    found = [ext for ext in IMAGE_EXTS if ext in sample and sample[ext] is not None]
    if len(found) != 1:
        fail(f"sample {sample.get('__key__')}: image fields {found}")
    return found[0]


def read_each(reader, samples, rows, key_of, check):
    """Checks every sample `reader` yields with `check(where, sample, row)`, and that it yields each
    succeeded sample of the manifests exactly once."""
    seen = set()
    for sample in samples:
        key = key_of(sample)
        row = rows.get(key) or fail(f"{reader}: {key} is not a succeeded sample of the manifests")
        check(f"{reader} {key}", sample, row)
        if key in seen:
            fail(f"{reader}: {key} read twice")
        seen.add(key)
    if seen != set(rows):
        fail(f"{reader}: read {len(seen)} samples, the manifests list {len(rows)}")
    print(f"{reader}: {len(seen)} sample(s): images, captions and metadata as recorded")


def check_fields(where, got, row, fields):
    for field in fields:
        if got[field] != row[field]:
            fail(f"{where}: {field} is {got[field]!r}, not {row[field]!r}")


def check_webdataset(tars, rows):
    import webdataset as wds
    from PIL import Image

    def check(where, sample, row):
        raw = sample[image_field(sample)]
        check_image(where, Image.open(io.BytesIO(raw)), row, raw)
        if sample["txt"].decode() != row["prompt"]:
            fail(f"{where}: caption {sample['txt']!r} is not the prompt")
        if json.loads(sample["json"]) != row:
            fail(f"{where}: KEY.json differs from the manifest row")

    samples = wds.WebDataset(tars, shardshuffle=False)
    read_each("webdataset", samples, rows, lambda s: s["__key__"], check)


def check_hf_webdataset(tars, rows):
    from datasets import load_dataset

    def check(where, sample, row):
        check_image(where, sample[image_field(sample)], row)
        if sample["txt"] != row["prompt"]:
            fail(f"{where}: caption {sample['txt']!r} is not the prompt")
        check_fields(f"{where} json", sample["json"], row, METADATA_FIELDS)

    dataset = load_dataset("webdataset", data_files={"train": tars}, split="train")
    read_each("datasets (webdataset builder)", dataset, rows, lambda s: s["__key__"], check)


def check_hf_imagefolder(out, rows):
    from datasets import load_dataset

    def check(where, sample, row):
        check_image(where, sample["image"], row)
        check_fields(where, sample, row, METADATA_FIELDS)

    dataset = load_dataset("imagefolder", data_dir=out, split="train")
    read_each("datasets (imagefolder builder)", dataset, rows, lambda s: s["key"], check)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the run's output directory")
    parser.add_argument("--expect", type=int, required=True, help="succeeded samples the run must hold")
    args = parser.parse_args()
    rows = manifest_rows(args.out)
    if len(rows) != args.expect:
        fail(f"{len(rows)} succeeded samples in the manifests, expected {args.expect}")
    tars = sorted(glob.glob(os.path.join(args.out, "[0-9]*.tar")))
    if tars:
        check_webdataset(tars, rows)
        check_hf_webdataset(tars, rows)
    else:
        check_hf_imagefolder(args.out, rows)


if __name__ == "__main__":
    main()
