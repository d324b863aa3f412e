#!/usr/bin/env python3
"""Fails when a workspace crate declares a dependency its code never names (what `cargo machete`
checks, without building or installing anything): every `[dependencies]`, `[dev-dependencies]` and
`[build-dependencies]` entry of every member must appear as `name::` or `use name` / `extern crate
name` somewhere in the sources of that crate's targets (src, tests, benches, examples, build.rs), and every
`[workspace.dependencies]` entry must be used by some member. A dependency needed only for its
features or links (e.g. to turn on a feature of a transitive crate) is listed in the member's
`[package.metadata.unused-deps] ignored = [...]` with a comment saying why; a crate made of tests
(`test-crate = true` there) may use its normal dependencies from its tests alone."""
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
)
problems = []
used_anywhere = set()
for pkg in meta["packages"]:
    manifest = Path(pkg["manifest_path"])
    crate_dir = manifest.parent
    toml = tomllib.loads(manifest.read_text())
    settings = toml.get("package", {}).get("metadata", {}).get("unused-deps", {})
    ignored = set(settings.get("ignored", []))
    def code_of(kinds):
        """The sources of this crate's targets of these kinds (`None`: all), each target's folder."""
        dirs = {Path(t["src_path"]).parent for t in pkg["targets"] if kinds is None or set(t["kind"]) & kinds}
        files = {f for d in dirs if d.is_dir() for f in d.rglob("*.rs")}
        return "\n".join(f.read_text(errors="replace") for f in sorted(files))

    # a normal dependency must serve the library or binaries, not only their tests
    code = {
        "dependencies": code_of(None if settings.get("test-crate") else {"lib", "rlib", "bin", "proc-macro", "custom-build"}),
        "dev-dependencies": code_of(None),
        "build-dependencies": code_of({"custom-build"}),
    }
    for table in ["dependencies", "dev-dependencies", "build-dependencies"]:
        for name in toml.get(table, {}):
            used_anywhere.add(name)
            ident = name.replace("-", "_")
            if name in ignored:
                continue
            if not re.search(rf"(\b{ident}::|\buse\s+{ident}\b|\bextern\s+crate\s+{ident}\b|\b{ident}!)", code[table]):
                where = "its tests only" if table == "dependencies" and re.search(rf"\b{ident}::", code["dev-dependencies"]) else "no code"
                problems.append(f"{manifest.relative_to(root)}: [{table}] {name} is used by {where}")
workspace = tomllib.loads((root / "Cargo.toml").read_text())
for name in workspace.get("workspace", {}).get("dependencies", {}):
    if name not in used_anywhere:
        problems.append(f"Cargo.toml: [workspace.dependencies] {name} is used by no member")
for p in problems:
    print(p)
if problems:
    print(f"unused dependencies: {len(problems)} (remove them, or list them with the reason under "
          "[package.metadata.unused-deps] ignored)", file=sys.stderr)
    sys.exit(1)
print("unused dependencies: none")
