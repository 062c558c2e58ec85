"""Pound, the daemon lbproxy replaces, for side-by-side lines in the same run.

Pound is not packaged by Debian: a script kept beside the repository (not in it) builds it from
its source tarball, once per cache folder, and prints the binary's path. When the script, its
build tools or the build itself are missing, the Pound lines are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import say

# Relative to the parent of a repository checkout.
BUILD_SCRIPT = Path("shared") / "anchors" / "build-pound.sh"
# Outside the repository, so the build is neither committed nor redone by every run.
DEFAULT_CACHE = Path.home() / ".cache" / "lbproxy-bench" / "pound"
# About 20 s once the tools are there; installing them with apt-get may take minutes.
BUILD_TIMEOUT = 900.0
GIT_TIMEOUT = 10.0


def _checkouts(root: Path) -> list[Path]:
    """This checkout, then the main one when this is a linked git worktree elsewhere."""
    found = [root]
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return found
    common = done.stdout.strip()
    if done.returncode == 0 and common:
        main = Path(common).parent
        if main != root:
            found.append(main)
    return found


def build_script(root: Path) -> Path | None:
    for checkout in _checkouts(root):
        candidate = checkout.parent / BUILD_SCRIPT
        if candidate.is_file():
            return candidate
    return None


def find(root: Path) -> tuple[str | None, str]:
    """(Pound's binary, "") or (None, why there is none). $POUND names a binary to use as is;
    $BENCH_POUND_CACHE the folder the build is kept in."""
    explicit = os.environ.get("POUND")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit, ""
        return None, f"POUND={explicit} is not an executable file"
    script = build_script(root)
    if script is None:
        return None, f"Pound not built: no ../{BUILD_SCRIPT} beside the repository"
    cache = os.environ.get("BENCH_POUND_CACHE") or str(DEFAULT_CACHE)
    say(f"Pound: building it into {cache} unless it is there already")
    try:
        done = subprocess.run(
            ["bash", str(script), cache],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"Pound not built: the build took more than {BUILD_TIMEOUT:.0f}s"
    except OSError as error:
        return None, f"Pound not built: {error}"
    lines = done.stdout.strip().splitlines()
    binary = lines[-1].strip() if lines else ""
    if done.returncode != 0 or not binary or not os.access(binary, os.X_OK):
        errors = done.stderr.strip().splitlines()
        cause = errors[0] if errors else f"exit status {done.returncode}"
        for line in errors:  # the script's own message says it best
            if line.startswith("build-pound:"):
                cause = line.removeprefix("build-pound:").strip()
                break
        return None, f"Pound not built: {cause}"
    return binary, ""
