"""Fetch Rust crate sources from Debian (`librust-*-dev`, optionally `rust-web-src`) without installing anything.

`apt-get download` fetches the .debs (many names per call) and `dpkg -x` unpacks each into DIR/x/<package>/.
Crate sources land in x/<pkg>/usr/share/cargo/registry/<crate>-<version>/, the rustc tree of rust-web-src in
x/rust-web-src/usr/src/rustc-<version>/. DIR/manifest.json records package, version, license, .rs files/bytes.
Re-running skips packages that are already unpacked.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from nanotrain.errors import UserError
from nanotrain.files import write_json

# Well-known crates (Debian package names). `popular` fetches all of these that the archive has.
POPULAR_CRATES = (
    "serde", "serde-json", "serde-derive", "tokio", "regex", "regex-syntax", "regex-automata", "clap", "syn",
    "rand", "rand-core", "itertools", "anyhow", "thiserror", "log", "futures-util", "futures-core", "hyper",
    "bytes", "chrono", "rayon", "rayon-core", "nom", "proc-macro2", "quote", "hashbrown", "once-cell",
    "crossbeam-channel", "crossbeam-utils", "libc", "memchr", "indexmap", "tracing", "tracing-core", "toml",
    "url", "smallvec", "bitflags", "lazy-static", "parking-lot", "aho-corasick", "base64", "num-traits",
    "walkdir", "tempfile", "time", "http", "mio", "env-logger", "semver",
)
RUSTC_SRC_PACKAGE = "rust-web-src"
BATCH = 100  # package names per `apt-get download`
NO_APT_HINT = ("use `nanotrain data build --src DIR` with any folder of .rs files instead")


def _require_tools() -> None:
    missing = [t for t in ("apt-get", "apt-cache", "dpkg") if shutil.which(t) is None]
    if missing:
        raise UserError(f"fetch-debian needs {', '.join(missing)} (Debian/Ubuntu), not found on PATH; {NO_APT_HINT}")


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def available_crate_packages() -> list[str]:
    """Every real `librust-*-dev` source package (the `+feature` metapackages have no files)."""
    r = _run(["apt-cache", "search", "--names-only", r"^librust-.*-dev$"])
    if r.returncode != 0:
        raise UserError(f"apt-cache search failed: {r.stderr.strip()[:200]}; {NO_APT_HINT}")
    names = sorted({line.split(" ", 1)[0] for line in r.stdout.splitlines() if line.strip()})
    return [n for n in names if "+" not in n]


def package_info(names: list[str]) -> dict[str, dict]:
    """Candidate version and archive fields of each package (`apt-cache show --no-all-versions`)."""
    info: dict[str, dict] = {}
    for i in range(0, len(names), 400):
        r = _run(["apt-cache", "show", "--no-all-versions", *names[i : i + 400]])
        for stanza in r.stdout.split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                m = re.match(r"^([A-Za-z-]+): (.*)$", line)
                if m:
                    fields[m.group(1)] = m.group(2)
            if "Package" in fields and fields["Package"] not in info:
                info[fields["Package"]] = fields
    return info


def _popular(available: list[str]) -> list[str]:
    have = set(available)
    chosen = [p for p in (f"librust-{c}-dev" for c in POPULAR_CRATES) if p in have]
    if not chosen:
        raise UserError(f"no librust-*-dev packages found in the apt lists (run apt-get update?); {NO_APT_HINT}")
    return chosen


def select_packages(crates: str, rustc_src: bool, seed: int) -> list[str]:
    """Package names for --crates popular | all | N (N random real packages, seeded) | popular+N.

    popular+N adds the first N of the other packages in a seeded shuffle, so a larger N only adds packages.
    """
    available = available_crate_packages()
    extra = re.fullmatch(r"popular\+(\d+)", crates)
    if crates == "popular":
        chosen = _popular(available)
    elif extra and int(extra.group(1)) > 0:
        chosen = _popular(available)
        others = [p for p in available if p not in set(chosen)]
        random.Random(seed).shuffle(others)
        chosen += sorted(others[: int(extra.group(1))])
    elif crates == "all":
        chosen = list(available)
    elif crates.isdigit() and int(crates) > 0:
        n = int(crates)
        chosen = sorted(random.Random(seed).sample(available, min(n, len(available))))
    else:
        raise UserError(f"--crates {crates!r}: expected popular, all, a positive number N or popular+N")
    if rustc_src:
        chosen.append(RUSTC_SRC_PACKAGE)
    return chosen


def _rs_stats(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".rs"):
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    files += 1
                    size += p.stat().st_size
    return files, size


def _license(pkg_dir: Path, package: str) -> str | None:
    """License from the crate's Cargo.toml, else the first License: line of debian/copyright."""
    for cargo in sorted(pkg_dir.glob("usr/share/cargo/registry/*/Cargo.toml")):
        text = cargo.read_text(errors="replace")
        m = re.search(r'^license\s*=\s*"([^"]+)"', text, re.M)
        if m:
            return m.group(1)
    copyright_file = pkg_dir / "usr/share/doc" / package / "copyright"
    if copyright_file.is_file():
        m = re.search(r"^License:\s*(\S.*)$", copyright_file.read_text(errors="replace"), re.M)
        if m:
            return m.group(1).strip()
    return None


def fetch_debian(out: Path, crates: str = "popular", rustc_src: bool = False, seed: int = 0,
                 progress: bool = True) -> dict:
    """Download and unpack the selected packages into `out`; returns (and writes) the manifest."""
    from tqdm import tqdm

    _require_tools()
    out = Path(out)
    say = print if progress else (lambda *a, **k: None)
    names = select_packages(crates, rustc_src, seed)
    info = package_info(names)
    missing = [n for n in names if n not in info]
    names = [n for n in names if n in info]
    if missing:
        say(f"not in the apt lists, skipped: {', '.join(missing)}")
    xdir, debdir = out / "x", out / "debs"
    xdir.mkdir(parents=True, exist_ok=True)

    def done_marker(name: str) -> Path:
        return xdir / name / ".nanolab-unpacked"

    todo = [n for n in names if not _is_current(done_marker(n), info[n]["Version"])]
    say(f"{len(names)} packages selected, {len(names) - len(todo)} already unpacked, {len(todo)} to fetch into {out}")
    failed: list[str] = []
    if todo:
        debdir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc="fetch+unpack", unit=" pkg", disable=not progress)
        for i in range(0, len(todo), BATCH):
            batch = todo[i : i + BATCH]
            r = _run(["apt-get", "download", *batch], cwd=debdir)
            if r.returncode != 0 and len(batch) > 1:
                # One bad name fails the whole call; retry one by one to keep the rest.
                for name in batch:
                    _run(["apt-get", "download", name], cwd=debdir)
            for name in batch:
                debs = sorted(debdir.glob(f"{name}_*.deb"))
                if not debs:
                    failed.append(name)
                    bar.update(1)
                    continue
                target = xdir / name
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=xdir))
                r = _run(["dpkg", "-x", str(debs[-1]), str(tmp)])
                if r.returncode != 0:
                    shutil.rmtree(tmp, ignore_errors=True)
                    failed.append(name)
                    bar.update(1)
                    continue
                if target.exists():
                    shutil.rmtree(target)
                tmp.rename(target)
                done_marker(name).write_text(info[name]["Version"] + "\n")
                for d in debs:
                    d.unlink()
                bar.update(1)
        bar.close()
        if debdir.exists() and not any(debdir.iterdir()):
            debdir.rmdir()
    if failed:
        say(f"could not download/unpack {len(failed)} package(s): {', '.join(failed[:10])}")

    packages = []
    for name in names:
        target = xdir / name
        if not done_marker(name).exists():
            continue
        files, size = _rs_stats(target)
        packages.append({
            "package": name,
            "version": info[name].get("Version"),
            "source": info[name].get("Source", name).split(" ")[0],
            "license": _license(target, name),
            "homepage": info[name].get("Homepage"),
            "deb_bytes": int(info[name].get("Size", 0)),
            "rs_files": files,
            "rs_bytes": size,
            "path": str(target.relative_to(out)),
        })
    manifest = _merge_manifest(out / "manifest.json", packages)
    manifest["selection"] = {"crates": crates, "rustc_src": rustc_src, "seed": seed}
    write_json(out / "manifest.json", manifest)
    total_files = sum(p["rs_files"] for p in manifest["packages"])
    total_bytes = sum(p["rs_bytes"] for p in manifest["packages"])
    say(f"{out}: {len(manifest['packages'])} packages, {total_files} .rs files, {total_bytes / 1e6:.1f} MB of .rs")
    if not manifest["packages"]:
        raise UserError(f"nothing could be fetched into {out}; {NO_APT_HINT}")
    return manifest


def _is_current(marker: Path, version: str) -> bool:
    return marker.is_file() and marker.read_text().strip() == version


def _merge_manifest(path: Path, packages: list[dict]) -> dict:
    """Keep entries of earlier fetches into the same folder (e.g. popular, then --rustc-src)."""
    old: list[dict] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("packages", [])
        except (json.JSONDecodeError, AttributeError):
            old = []
    merged = {p["package"]: p for p in old if isinstance(p, dict) and "package" in p}
    merged.update({p["package"]: p for p in packages})
    return {
        "schema_version": 1,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": [merged[k] for k in sorted(merged)],
    }
