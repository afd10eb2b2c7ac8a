"""The docs hold together: every relative link resolves, and the claims page is what its evidence gives."""

import re
import shutil
from pathlib import Path

import pytest

from siamgrad.experiments import claims as C

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def _relative_links(page: Path) -> list[str]:
    targets = [m.group(1).split("#")[0] for m in _LINK.finditer(page.read_text())]
    return [t for t in targets if t and not re.match(r"^[a-z]+:", t)]  # http:, mailto: ...


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    missing = [t for t in _relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_docs_name_no_missing_markdown_page():
    """Pages named in the text (``docs/NAME.md``), not only linked, exist too."""
    named = {m for page in PAGES for m in re.findall(r"docs/[\w.-]+\.md", page.read_text())}
    assert named and not [n for n in sorted(named) if not (ROOT / n).exists()]


@pytest.mark.parametrize("size", ["cpu", "cpu24", "gpu"])
def test_the_committed_claims_page_is_what_its_evidence_gives(tmp_path, size):
    """``siamgrad reproduce claims size=S train=false`` regenerates docs/claims*.md from its .csv alone
    (no run folders): the page cannot drift from its numbers."""
    name = C.report_name(size)
    shutil.copy(ROOT / "docs" / name.replace(".md", ".csv"), tmp_path / name.replace(".md", ".csv"))
    doc = C.run_claims([f"size={size}", "train=false", f"doc={tmp_path / name}"], out_dir=str(tmp_path / "none"),
                       log=False)
    assert doc.read_text() == (ROOT / "docs" / name).read_text(), \
        f"docs/{name} is stale: run `siamgrad reproduce claims size={size} train=false` from the checkout"
    assert doc.with_suffix(".csv").read_text() == (ROOT / "docs" / name.replace(".md", ".csv")).read_text()


@pytest.mark.parametrize("module", [
    "siamgrad.methods.registry", "siamgrad.models.backbones", "siamgrad.augment.multiview",
    "siamgrad.core.objectives.contrastive", "siamgrad.core.objectives.asymmetric",
    "siamgrad.core.objectives.decorrelation", "siamgrad.core.objectives.unigrad", "siamgrad.eval.knn",
    "siamgrad.eval.linear", "siamgrad.eval.protocols", "siamgrad.experiments.stats", "siamgrad.experiments.provenance",
    "siamgrad.experiments.tuning", "siamgrad.diagnostics.features"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


def test_every_siamgrad_name_in_the_docs_resolves():
    """``siamgrad.a.b`` in README.md and docs/: a module, or an object of one."""
    import importlib

    names = {m for page in PAGES for m in re.findall(r"\bsiamgrad(?:\.[A-Za-z_]\w*)+", page.read_text())}
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert names and not missing, f"names that resolve to nothing: {missing}"
