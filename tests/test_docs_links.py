"""The documentation holds together: every relative link (and #anchor) in README.md,
docs/**/*.md, configs/README.md, tools/README.md and dev/README.md resolves, and README.md stays
short enough to read in a few minutes."""

import glob
import os
import re
import sys
import unicodedata

import pytest
from helpers import ROOT

README_MAX_LINES = 250
# the pages whose links are checked; those that do not exist (yet) are skipped
PAGES = sorted(
    {
        os.path.join(ROOT, "README.md"),
        os.path.join(ROOT, "configs", "README.md"),
        os.path.join(ROOT, "tools", "README.md"),
        os.path.join(ROOT, "dev", "README.md"),
        *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True),
    }
)
PAGES = [p for p in PAGES if os.path.isfile(p)]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)=["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str):
    """The link targets of a markdown text: [..](target), ![..](target), <a href>, <img src>."""
    body = prose(text)
    return [m.group(1) for m in LINK.finditer(body)] + HTML_LINK.findall(body)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = unicodedata.normalize("NFC", text)
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(text: str):
    """Every anchor a markdown text defines: its headings' slugs (repeats get -1, -2, ...) and
    explicit <a name=...> / id=... targets."""
    seen, out = {}, set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    out.update(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", text, re.I))
    return out


def broken_links(page: str):
    """(target, why) for every relative link of ``page`` that does not resolve."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    out = []
    for target in links(text):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        base = ROOT if path.startswith("/") else os.path.dirname(page)  # "/x": from the root
        file = os.path.normpath(os.path.join(base, path.lstrip("/"))) if path else page
        if not file.startswith(ROOT + os.sep):
            out.append((target, "points outside the repository"))
        elif not os.path.exists(file):
            out.append((target, f"{os.path.relpath(file, ROOT)} does not exist"))
        elif anchor and file.endswith(".md"):
            with open(file, encoding="utf-8") as f:
                if anchor not in anchors(f.read()):
                    out.append((target, f"no heading #{anchor} in {os.path.relpath(file, ROOT)}"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, ROOT) for p in PAGES])
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_readme_is_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it <= {README_MAX_LINES}"


def test_the_checker_finds_broken_links(tmp_path, monkeypatch):
    """The checker itself: a missing file, a missing anchor and a link outside the repository
    are reported; a good link, an anchor of the same page, links in code and URLs are not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# T\n\n## Two words, `code`\n\n## Two words, `code`\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# Here\n"
        "[ok](b.md) [ok](b.md#two-words-code) [ok](b.md#two-words-code-1) [ok](#here)\n"
        "![img](b.md) [root](/docs/b.md)\n"
        "[url](https://example.com/x.md) `[code](no.md)`\n```\n[fenced](no.md)\n```\n"
        '[missing](c.md) [anchor](b.md#nowhere) [outside](../../x.md) <a href="d.md">d</a>\n'
    )
    found = [target for target, _ in broken_links(str(page))]
    assert found == ["c.md", "b.md#nowhere", "../../x.md", "d.md"]


# repository paths named in code spans and blocks: `dev/rehearse.py`, `configs/.../x.yaml`, ...
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:tools|dev|configs|docs|iif_d2|tests)/[\w./-]*\.(?:py|yaml|md|json|png|csv))\b"
)
CODE = re.compile(r"^(```|~~~).*?^\1[^\n]*$|`[^`\n]+`", re.M | re.S)
# the hand-written pages (docs/benchmarks/ is generated and checked by its generator)
PROSE_PAGES = [
    os.path.join(ROOT, "README.md"),
    *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))),
]


def missing_paths(page: str):
    """Repository paths named in ``page``'s code that do not exist (a path right after
    "detectron2's" is detectron2's own, e.g. its tools/train_net.py)."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    out = []
    for m in CODE.finditer(text):
        if text[max(0, m.start() - 14) : m.start()].endswith("detectron2's "):
            continue
        out += [
            p for p in REPO_PATH.findall(m.group(0)) if not os.path.exists(os.path.join(ROOT, p))
        ]
    return out


@pytest.mark.parametrize("page", PROSE_PAGES, ids=[os.path.relpath(p, ROOT) for p in PROSE_PAGES])
def test_paths_named_in_the_docs_exist(page):
    assert missing_paths(page) == []


def test_the_path_checker_finds_a_missing_path(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "here.py").write_text("")
    page = tmp_path / "p.md"
    page.write_text(
        "`dev/here.py` `dev/gone.py` detectron2's `tools/train_net.py`\n"
        "```bash\npython tools/moved.py --config-file configs/x/y.yaml\n```\n"
    )
    assert missing_paths(str(page)) == ["dev/gone.py", "tools/moved.py", "configs/x/y.yaml"]


# -- the README's code runs against the package as it is --------------------------------------

QUICK_CONFIG = os.path.join(
    ROOT, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_iif.yaml"
)


def _readme_blocks(language: str, section: str = "## Use IIF in your own detectron2 project"):
    """The ``language`` code blocks of one section of README.md."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    body = text[start : end if end >= 0 else None]
    return re.findall(rf"^```{language}\n(.*?)^```", body, re.M | re.S)


def test_readme_yaml_snippet_builds_the_iif_box_predictor(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import iif_d2.modeling  # noqa: F401
    from iif_d2 import IIFFastRCNNOutputLayers, add_iif_config, resolve_training_set

    (block,) = _readme_blocks("yaml")
    (tmp_path / "iif.yaml").write_text(block)
    cfg = add_iif_config(get_cfg())
    cfg.merge_from_file(QUICK_CONFIG.replace("_iif.yaml", ".yaml"))  # softmax
    cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.ROI_HEADS.NAME = "GeneralizedRCNN", "StandardROIHeads"
    assert not cfg.MODEL.ROI_BOX_HEAD.IIF.ENABLED  # a plain detectron2 model ...
    cfg.merge_from_file(str(tmp_path / "iif.yaml"))  # ... which the README's YAML turns into IIF
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"])
    model = build_model(resolve_training_set(cfg))
    predictor = model.roi_heads.box_predictor
    assert type(model).__name__ == "IIFGeneralizedRCNN"
    assert isinstance(predictor, IIFFastRCNNOutputLayers) and predictor.iif_mode == "end_to_end"


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    """The trainer snippet (with a tiny config for "my_config.yaml") and the box predictor
    snippet run as printed, and build what they say."""
    from iif_d2 import IIFFastRCNNOutputLayers

    trainer_block, predictor_block, classifier_block = _readme_blocks("python")
    monkeypatch.chdir(tmp_path)  # the snippet's OUTPUT_DIR is detectron2's ./output
    scope = {}
    exec(trainer_block.replace('"my_config.yaml"', repr(QUICK_CONFIG)), scope)
    box_predictor = scope["trainer"].model.roi_heads.box_predictor
    assert isinstance(box_predictor, IIFFastRCNNOutputLayers)
    assert (tmp_path / "output" / "iif_class_stats.json").is_file()
    scope = {}
    exec(predictor_block, scope)
    assert isinstance(scope["predictor"], IIFFastRCNNOutputLayers)
    assert scope["predictor"].iif_weights.tolist() == scope["w"].tolist()
    # the classifier snippet, with a model, a batch and the images per class it names
    import torch

    scope = {"counts": [600, 100, 10], "model": torch.nn.Linear(4, 3)}
    scope.update(images=torch.randn(5, 4), labels=torch.tensor([0, 1, 2, 0, 1]))
    exec(classifier_block, scope)
    assert scope["loss"].ndim == 0 and torch.isfinite(scope["loss"])
    weights = scope["iif"](torch.ones(1, 3))[0]  # the smooth weights of the three classes
    assert weights[0] < weights[1] < weights[2]  # the rarest class weighs most
