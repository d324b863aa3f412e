#!/usr/bin/env python3
"""Checks a `fleet bulk` WebDataset output directory the way dataset tools read it.

    python3 tools/check_webdataset.py OUT_DIR [--expect N]

For every NNNNN.tar: each sample has KEY.png|jpg|webp, KEY.txt and KEY.json, keys are unique
across the dataset, KEY.json has the documented fields and matches the manifest row and the
image's sha256, and the shard's _stats.json counts agree. With the `webdataset` package installed
(pip install webdataset) the shards are also loaded through `webdataset.WebDataset`; with
`pyarrow` installed each NNNNN_manifest.parquet is read and compared with the JSONL manifest;
without them only the standard library is used. Exit 0 when everything holds. Not run in CI.
"""

import argparse
import glob
import hashlib
import json
import os
import sys
import tarfile

FIELDS = ["key", "prompt", "seed", "model", "loras", "steps", "guidance", "width", "height",
          "format", "sha256", "bytes", "worker", "timings", "status"]
IMAGE_EXTS = {"png", "jpg", "webp"}


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def read_shard(path):
    """key -> {ext: bytes}, in tar order (WebDataset groups consecutive files by key)."""
    samples = {}
    order = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                fail(f"{path}: {member.name} is not a regular file")
            key, _, ext = member.name.partition(".")
            if key in samples and order[-1] != key:
                fail(f"{path}: files of {key} are not consecutive")
            if key not in samples:
                samples[key] = {}
                order.append(key)
            samples[key][ext] = tar.extractfile(member).read()
    return order, samples


def check_parquet(tars):
    """Each shard's Parquet manifest holds the JSONL manifest's rows (pyarrow, if installed)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        print("pyarrow not installed: skipped the Parquet manifest check")
        return
    rows = 0
    for path in tars:
        stem = path[:-len(".tar")]
        with open(stem + "_manifest.jsonl") as f:
            manifest = [json.loads(line) for line in f if line.strip()]
        table = pq.read_table(stem + "_manifest.parquet").to_pylist()
        if len(table) != len(manifest):
            fail(f"{stem}_manifest.parquet: {len(table)} rows, the JSONL manifest has {len(manifest)}")
        for got, row in zip(table, manifest):
            for field in ["key", "line", "status", "prompt", "seed", "model", "steps", "width", "height",
                          "sha256", "bytes", "job_id", "worker"]:
                if got[field] != row.get(field):
                    fail(f"{stem}_manifest.parquet: {row['key']}.{field} is {got[field]!r}, not {row.get(field)!r}")
            if [lora["name"] for lora in got["loras"]] != [lora["name"] for lora in row["loras"]]:
                fail(f"{stem}_manifest.parquet: {row['key']}.loras differ")
            if json.loads(got["metadata"] or "{}") != row.get("metadata", {}):
                fail(f"{stem}_manifest.parquet: {row['key']}.metadata differs")
        rows += len(table)
    print(f"pyarrow: {rows} Parquet manifest row(s) agree with the JSONL manifests")


def check(out, expect):
    tars = sorted(glob.glob(os.path.join(out, "[0-9]*.tar")))
    if not tars:
        fail(f"no shards in {out}")
    seen = set()
    total = 0
    for path in tars:
        stem = path[:-len(".tar")]
        order, samples = read_shard(path)
        with open(stem + "_manifest.jsonl") as f:
            manifest = [json.loads(line) for line in f if line.strip()]
        with open(stem + "_stats.json") as f:
            stats = json.load(f)
        succeeded = [row for row in manifest if row["status"] == "succeeded"]
        if [row["key"] for row in succeeded] != order:
            fail(f"{path}: tar keys differ from the manifest's succeeded rows")
        if stats["count"] != len(manifest) or stats["succeeded"] != len(succeeded):
            fail(f"{path}: _stats.json counts disagree with the manifest")
        if stats["failed"] != len(stats["failures"]):
            fail(f"{path}: failures not all listed")
        duplicates = [row["key"] for row in manifest if row["status"] == "duplicate"]
        if stats.get("duplicate", 0) != len(duplicates) or [d["key"] for d in stats.get("duplicates", [])] != duplicates:
            fail(f"{path}: near-duplicates not all listed")
        for row in succeeded:
            key = row["key"]
            files = samples[key]
            image_ext = IMAGE_EXTS & set(files)
            if len(image_ext) != 1 or set(files) != image_ext | {"txt", "json"}:
                fail(f"{path}: {key} has files {sorted(files)}")
            meta = json.loads(files["json"])
            missing = [f for f in FIELDS if f not in meta]
            if missing:
                fail(f"{path}: {key}.json lacks {missing}")
            if meta != row:
                fail(f"{path}: {key}.json differs from its manifest row")
            if files["txt"].decode() != meta["prompt"]:
                fail(f"{path}: {key}.txt is not the prompt")
            if hashlib.sha256(files[image_ext.pop()]).hexdigest() != meta["sha256"]:
                fail(f"{path}: {key} image does not match its sha256")
            if key in seen:
                fail(f"duplicate key {key}")
            seen.add(key)
        total += len(succeeded)
    if expect is not None and total != expect:
        fail(f"{total} samples, expected {expect}")
    print(f"tarfile: {len(tars)} shard(s), {total} sample(s), keys unique, JSON complete, manifests agree")
    check_parquet(tars)
    try:
        import webdataset as wds
    except ImportError:
        print("webdataset not installed: skipped the WebDataset loader check")
        return
    loaded = 0
    for sample in wds.WebDataset(tars, shardshuffle=False):
        if not {"txt", "json"} <= set(sample) or not IMAGE_EXTS & set(sample):
            fail(f"webdataset sample {sample.get('__key__')} lacks files: {sorted(sample)}")
        loaded += 1
    if loaded != total:
        fail(f"webdataset loaded {loaded} samples, tarfile found {total}")
    print(f"webdataset: loaded {loaded} sample(s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the run's output directory")
    parser.add_argument("--expect", type=int, help="number of samples the dataset must hold")
    args = parser.parse_args()
    check(args.out, args.expect)


if __name__ == "__main__":
    main()
