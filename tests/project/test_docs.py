"""The documentation cannot rot unnoticed: the Python blocks of README.md and
docs/*.md run (each page's blocks in order, in one namespace, from a scratch
folder); their links, and every ``docs/<page>.md#anchor`` named in the code, point
at what exists; every ``--config NAME`` they show is a config the package ships.

A Python block that must not run here (a GPU, a dataset, a cluster) is fenced
```` ```python no-run ```` and its first line is a comment that says why."""

import fnmatch
import os
import re
from pathlib import Path

import pytest

from lomar.config import ConfigError, resolve_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOC_REF = re.compile(r"docs/([\w-]+\.md)(#[\w-]+)?")
SOURCE_GLOBS = ("*.py", "*.cpp", "*.cu", "*.h", "*.yaml", "*.sh", "*.txt", "Makefile", "*.toml")


def fenced_blocks(page: Path):
    """(info string, code, line number) of every fenced block of a Markdown page."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        yield m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1


def python_blocks(page: Path):
    return [(info, code, line) for info, code, line in fenced_blocks(page)
            if info.split()[:1] == ["python"]]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files an example writes land here
    namespace = {"__name__": f"docs:{page.name}"}
    for info, code, line in python_blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        if "no-run" in info.split():
            assert code.lstrip().startswith("#"), f"{where}: a no-run block must say why first"
            compile(code, where, "exec")  # it must still be Python
            continue
        exec(compile(code, where, "exec"), namespace)


def test_the_front_page_shows_code_and_stays_short():
    readme = ROOT / "README.md"
    runnable = [b for b in python_blocks(readme) if "no-run" not in b[0].split()]
    assert len(runnable) >= 2, "README: a model example and an ops example"
    assert len(readme.read_text().splitlines()) <= 150
    assert sum(len(python_blocks(p)) for p in PAGES[1:]) >= 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_point_at_what_exists(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: link to {target}: no such heading"


def source_files():
    """The project's own text files: not the venv, builds, outputs, benchmark records."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build", "output", "__pycache__"))
                   and not (d == "results" and Path(folder).name == "bench")]
        for name in files:
            if any(fnmatch.fnmatch(name, pattern) for pattern in SOURCE_GLOBS):
                yield Path(folder) / name


def test_code_points_into_docs_that_exist():
    seen = 0
    for path in source_files():
        for name, anchor in DOC_REF.findall(path.read_text(errors="replace")):
            page = ROOT / "docs" / name
            assert page.is_file(), f"{path.relative_to(ROOT)}: docs/{name} does not exist"
            assert not anchor or anchor[1:] in anchors(page), \
                f"{path.relative_to(ROOT)}: docs/{name}{anchor}: no such heading"
            seen += 1
    assert seen > 10  # the code's pointers into the docs were found


def test_nothing_points_outside_the_repository():
    # Notes kept outside the repository (a shared folder of references) are not
    # the user's: the code and docs must stand without them.
    outside = re.compile(r"shared[/](REFERENCE|GPU|STYLE|paper|hooks)|REFERENCE\.md|GPU\.md")
    for path in list(source_files()) + PAGES:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            assert not outside.search(line), f"{path.relative_to(ROOT)}:{number}: {line.strip()}"


def test_configs_shown_are_shipped():
    shown = set()
    for path in PAGES + [ROOT / "Makefile"]:
        shown |= set(re.findall(r"--config[ =]([\w./-]+)", path.read_text()))
    shown.discard("NAME")
    assert shown, "no --config example found"
    for name in shown:
        if name.endswith((".yaml", ".yml")):
            continue  # a file of the user's, shown by its path; names have no suffix
        try:
            resolve_config(name)
        except ConfigError as exc:
            pytest.fail(f"--config {name} is shown in the docs: {exc}")


@pytest.mark.parametrize("figure,page", [("resolution_cost", "README.md"),
                                          ("tiled_formats", "docs/input-pipeline.md")])
def test_figures_are_drawn_from_the_records(figure, page, tmp_path):
    """Each figure script draws from its committed record (no number typed in), and the
    page that shows the figure names it."""
    import importlib.util

    script = ROOT / "docs" / "figures" / f"{figure}.py"
    spec = importlib.util.spec_from_file_location(figure, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DEFAULT_RESULTS.is_file()
    out = module.draw(module.DEFAULT_RESULTS, tmp_path / "figure.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert f"figures/{figure}.png" in (ROOT / page).read_text()
