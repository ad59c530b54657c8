"""The code base's shape: modules short enough to read, the model's constructor short, no tracker
numbers where a reader of the repository would meet them."""
import inspect
import re

from common.config import REPO_ROOT

PRODUCT = ("common", "pipeline", "kernels", "train")
MAX_MODULE_LINES = 500
# "issue 12", "issues 10, 11", "item 6" (a work item's number) mean nothing outside the tracker;
# other projects' tracker references (owner/repo#N) name where they point and may stay.
TRACKER = re.compile(r"\bissues? \d+|\bitems? \d+(-\d+)?\b(?!\s*(?:steps|bars|songs|windows|hits|files))|(?<![\w/&])#\d{1,4}\b", re.I)


def _product_modules():
    return sorted(p for pkg in PRODUCT for p in (REPO_ROOT / pkg).rglob("*.py"))


def test_no_product_module_is_over_500_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in _product_modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these by what they hold: {long}"


def test_the_models_constructor_reads_at_once():
    from train.model import HierarchicalDrumModel

    lines = inspect.getsource(HierarchicalDrumModel.__init__).splitlines()
    assert len(lines) < 60, len(lines)


def _text_files():
    for pattern in ("*.py", "*.yaml", "*.md", "*.toml", "*.html", "*.sh"):
        for p in REPO_ROOT.rglob(pattern):
            rel = p.relative_to(REPO_ROOT)
            if rel.parts[0] in (".venv", ".git", "data", "runs", "outputs", ".hypothesis") or "egg-info" in str(rel):
                continue
            yield rel, p


def test_no_tracker_numbers_in_code_configs_or_docs():
    found = [f"{rel}:{i}: {line.strip()[:90]}" for rel, p in _text_files()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if TRACKER.search(line) and rel.name != "test_layout.py"]
    assert not found, "say what the thing is instead:\n" + "\n".join(found[:30])


def test_the_tracker_pattern_finds_what_it_should():
    assert TRACKER.search("the recipe (issue 10's bar)") and TRACKER.search("issues 10, 11")
    assert TRACKER.search("# --- item 6: locks") and TRACKER.search("see #27")
    assert not TRACKER.search("magenta/magenta-studio#8") and not TRACKER.search("2 items 16 steps apart")
