"""The README's promise, and its guides': every snippet and command in them works.

The pages are README.md and every docs/guides/*.md. Each ``rotary ...`` command in them (code
blocks, tables and inline code) is checked: the README's "training on your own text" block,
``rotary info``, ``train --resume`` and the help commands run for real on a tiny corpus
(training shrunk by appended overrides); the others train or tokenize at full size, so they are
parsed and their recipe with its overrides is resolved and validated, which is what fails first
when an option or a recipe key is renamed. The Python snippets run as written against a tiny
run at ``runs/demo`` (the ``openai`` client's runs against a server in tests/infer/test_serve.py).
The README stays a guide (at most 250 lines), every relative link of the pages resolves to a
file of the repository (and a heading, where it names one), every guide is linked from the
README, and the scripts the pages name exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from rotary import cli
from rotary.commands.train import split_recipe
from rotary.config import parse_overrides
from rotary.demo import DEFAULT_RECIPE
from rotary.train.config import load_recipe
from rotary.train.finetune import finetune_defaults
from tests.train_support import write_corpus

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in [README, *GUIDES]}
MAX_README_LINES = 250
# The only places outside the repository a page may link to: well-known references.
EXTERNAL_HOSTS = ("tatoeba.org", "arxiv.org", "aclanthology.org", "doi.org")
VERBS = ("demo", "train", "generate", "convert", "info", "tokenizer", "prepare")

# Appended to the README's training commands when they run for real: the same pipeline, tiny.
TINY_TRAIN = ["--model.preset", "tiny", "--model.max_seq_len", "64", "--seq-len", "32", "--batch-size", "2",
              "--max-steps", "2", "--eval-interval", "2", "--eval-batches", "1", "--checkpoint-interval", "2",
              "--threads", "1", "--progress", "false", "--tensorboard", "false"]


def code_blocks(lang: str | None = None, text: str = TEXT) -> list[str]:
    """The fenced code blocks of ``text`` (the README unless told) tagged ``lang`` ("" = untagged)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for tag, body in blocks if lang is None or tag == lang]


def readme_commands(text: str = TEXT) -> list[list[str]]:
    """Every `rotary ...` command of ``text`` (the README unless told): lines of code blocks and
    inline code, as argv lists (after ``rotary`` or ``-m rotary``, and after environment
    settings such as ``ROTARY_CPU_GEMM=onednn``); ``VERB`` stands for each verb."""
    found: list[str] = []
    for body in code_blocks("", text):
        for line in body.splitlines():  # commands start at column 0; indented lines are output
            line = line.split("  #")[0].rstrip()
            line = re.sub(r"^(?:[A-Z][A-Z0-9_]*=\S* )+(?=rotary )", "", line)
            if line.startswith("rotary "):
                found.append(line)
            elif " -m rotary " in line:  # torchrun / accelerate launch
                found.append("rotary " + line.split(" -m rotary ", 1)[1])
    for code in re.findall(r"`(rotary [^`]+)`", text):
        found.append(" ".join(code.split()))  # inline code may wrap across lines
    out: list[list[str]] = []
    for cmd in dict.fromkeys(found):
        argv = shlex.split(cmd, comments=True)[1:]  # a `# comment` is no argument
        expanded = [[v if a == "VERB" else a for a in argv] for v in VERBS] if "VERB" in argv else [argv]
        out.extend(expanded)
    return out


COMMANDS = readme_commands()
PAGE_COMMANDS = [(page, argv) for page, text in PAGES.items() for argv in readme_commands(text)]


def test_the_readme_shows_the_commands_it_should():
    joined = [" ".join(c) for c in COMMANDS]
    assert len(COMMANDS) >= 15
    for verb in VERBS:
        assert any(c[:1] == [verb] for c in COMMANDS), verb
    assert "train recipes/shakespeare.yaml" in joined  # from the torchrun / accelerate lines


def check_parses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    if "--help" in argv:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_known_args(argv)
        assert exit_info.value.code == 0
        assert "usage: rotary" in capsys.readouterr().out
        return
    args, extra = parser.parse_known_args(argv)  # a usage error raises SystemExit(2)
    assert getattr(args, "func", None) is not None, argv
    if not getattr(args, "accepts_overrides", False):
        assert not extra, (argv, extra)
    if args.command in ("train", "plan"):
        recipe, rest = split_recipe(extra)
        load_recipe(recipe, parse_overrides(rest))  # the recipe is found, every key exists and types
    elif args.command == "demo":
        load_recipe(args.recipe or DEFAULT_RECIPE, parse_overrides(extra))
    elif args.command == "finetune":  # as recipe_from_args builds it: the fine-tuning defaults beneath
        recipe, rest = split_recipe(extra)
        overrides = parse_overrides(rest) | ({"init_from": args.init_from} if args.init_from is not None else {})
        if args.output_dir:
            overrides["output_dir"] = args.output_dir
        load_recipe(recipe, overrides, finetune_defaults(recipe, overrides))


def test_every_guide_shows_commands_and_is_linked_from_the_readme():
    assert GUIDES, "docs/guides/ holds the workflow guides"
    linked = {target for _, target in links("README.md")}
    for guide in GUIDES:
        page = guide.relative_to(ROOT).as_posix()
        assert any(p == page for p, _ in PAGE_COMMANDS) or code_blocks(None, PAGES[page]), page
        assert page in linked, f"README.md does not link {page}"


@pytest.mark.parametrize(("page", "argv"), PAGE_COMMANDS,
                         ids=[f"{page.removeprefix('docs/')}: {' '.join(c)[:60]}" for page, c in PAGE_COMMANDS])
def test_every_readme_command_parses_and_its_recipe_resolves(page, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # built-in recipes must resolve outside the repository too
    check_parses(argv, capsys)


@pytest.mark.filterwarnings("ignore:Llama has no residual")  # the recipe trains with dropout
def test_the_python_snippet_and_the_own_text_commands_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")  # the snippet ends with rotary.hf.to_hf
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "my_texts", n_docs=60)
    (own_text,) = [b for b in code_blocks("") if "rotary tokenizer train --corpus my_texts/" in b]
    lines = [shlex.split(line)[1:] for line in own_text.splitlines() if line.startswith("rotary ")]
    assert [a[0] for a in lines] == ["tokenizer", "prepare", "train", "generate"]
    for argv in lines:
        if argv[0] == "train":
            argv = argv + TINY_TRAIN
        if argv[0] == "generate":
            argv = argv + ["--max-new-tokens", "8", "--seed", "0"]  # (200 tokens would only be slower)
        assert cli.main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "Once upon a time" in out and (tmp_path / "runs/mine/best/config.json").is_file()

    # the inline commands that are cheap here run too
    for argv in (["train", "--resume", "--output-dir", "runs/mine"], ["info"]):
        assert argv in COMMANDS
        assert cli.main(argv) == 0, argv
    capsys.readouterr()

    # the Python snippets, as written, on this tiny run standing in for the demo's
    shutil.copytree(tmp_path / "runs/mine", tmp_path / "runs/demo")
    snippets = [(page, body) for page, text in PAGES.items() for body in code_blocks("python", text)]
    first = snippet(snippets, "README.md", "rotary.CausalLM(")
    api = snippet(snippets, "docs/guides/python-api.md", "rotary.train_model(cfg)")
    conversion = snippet(snippets, "docs/guides/conversion.md", "rotary.hf.from_hf(")
    client = snippet(snippets, "README.md", "from openai import OpenAI")  # tests/infer/test_serve.py runs it
    chat = snippet(snippets, "docs/guides/chat.md", "pre.chat(")  # tests/train/test_sft.py runs it
    assert len(snippets) == 5 and {first, api, conversion, client, chat} == {b for _, b in snippets}
    assert len(code_blocks("python")) == 2  # the README's: the first one and the client

    scope: dict = {}
    exec(compile(first, str(README) + ":python", "exec"), scope)
    assert type(scope["hf_model"]).__name__ == "LlamaForCausalLM"
    assert scope["loss"].ndim == 0 and scope["loss"].item() > 0
    assert pre_printed(capsys)

    # the conversion guide's round trip
    scope = {}
    exec(compile(conversion, "docs/guides/conversion.md:python", "exec"), scope)
    assert type(scope["hf_model"]).__name__ == "LlamaForCausalLM" and type(scope["back"]).__name__ == "CausalLM"
    ids = scope["pre"].tokenizer.encode("ROMEO:")
    import torch

    with torch.no_grad():
        want = scope["pre"].model(torch.tensor([ids]))
        got = scope["back"].eval()(torch.tensor([ids]))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    # the API guide's snippet: a real (tiny) training run through the public names only
    scope = {}
    exec(compile(api, "docs/guides/python-api.md:python", "exec"), scope)
    assert scope["result"].step == 20 and (tmp_path / "runs/api/best/manifest.json").is_file()
    assert pre_printed(capsys)


def snippet(snippets: list[tuple[str, str]], page: str, containing: str) -> str:
    """The one Python snippet of ``page`` that contains ``containing``."""
    (body,) = [b for p, b in snippets if p == page and containing in b]
    return body


def pre_printed(capsys: pytest.CaptureFixture[str]) -> bool:
    """The snippet printed a sample (the continuation of "ROMEO:")."""
    return capsys.readouterr().out.strip() != ""


NOT_RUN = [(page, line.strip()) for page, text in PAGES.items() for body in code_blocks("", text)
           for line in body.splitlines()
           if line.strip().startswith(("make ", ".venv/bin/tensorboard", "torchrun", "accelerate"))]


@pytest.mark.parametrize(("page", "line"), NOT_RUN,
                         ids=[f"{page.removeprefix('docs/')}: {line[:60]}" for page, line in NOT_RUN])
def test_commands_the_suite_does_not_run(page, line):
    if line.startswith(("torchrun", "accelerate")):
        assert " -m rotary " in line, line  # so test_every_readme_command_parses... parses it
        pytest.skip("needs several processes (tests/train/test_distributed.py launches them); the "
                    "`-m rotary ...` part is parsed by test_every_readme_command_parses...")
    if line.startswith("make "):
        assert line.split()[1] in MAKE_TARGETS, line
        pytest.skip("the Makefile's demo/test targets are the demo and this suite themselves")
    pytest.skip("tensorboard is a server that runs until stopped")


MAKE_TARGETS = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M)


def test_the_readme_is_a_guide_not_a_notebook():
    n = len(TEXT.splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move details into docs/guides/"


SCRIPT = r"(?:^|[\s`(])python3? ((?:bench|experiments)/[\w/.-]+\.py)"  # `python bench/x.py ...`
SCRIPTS = sorted({(page, path) for page, text in PAGES.items() for path in re.findall(SCRIPT, text, flags=re.M)})


@pytest.mark.parametrize(("page", "script"), SCRIPTS, ids=[f"{p.removeprefix('docs/')}: {s}" for p, s in SCRIPTS])
def test_the_scripts_the_pages_name_exist(page, script):
    assert (ROOT / script).is_file(), f"{page} runs {script}, which is not in the repository"


def links(page: str) -> list[tuple[str, str]]:
    """The markdown links (and images) of ``page``, outside code, as (target as written, the
    target's path from the repository root, or the URL)."""
    text = re.sub(r"^```.*?^```", "", PAGES[page], flags=re.S | re.M)
    text = re.sub(r"`[^`]*`", "", text)
    out = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            out.append((target, target))
            continue
        path = target.split("#", 1)[0]
        where = (ROOT / page).parent / path if path else ROOT / page
        resolved = where.resolve()
        rel = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
        out.append((target, rel))
    return out


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the headings of a markdown text."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


LINKS = [(page, target, rel) for page in PAGES for target, rel in links(page)]


def test_the_pages_have_links():
    assert sum(page == "README.md" for page, _, _ in LINKS) >= 10
    assert {page for page, _, _ in LINKS} == set(PAGES)  # every guide links back, at least


@pytest.mark.parametrize(("page", "target", "rel"), LINKS,
                         ids=[f"{page.removeprefix('docs/')} -> {target}" for page, target, _ in LINKS])
def test_every_link_resolves(page, target, rel):
    if re.match(r"^[a-z]+:", target):
        host = re.sub(r"^https?://(www\.)?", "", target).split("/")[0]
        assert target.startswith("https://") and host in EXTERNAL_HOSTS, (
            f"{page} links {target}, outside the repository: link a file of the repository")
        return
    assert not Path(rel).is_absolute(), f"{page} links {target}, which is outside the repository"
    assert (ROOT / rel).exists(), f"{page} links {target}, which does not exist ({rel})"
    if "#" in target:
        anchor = target.split("#", 1)[1]
        assert rel.endswith(".md"), (page, target)
        assert anchor in anchors((ROOT / rel).read_text(encoding="utf-8")), (
            f"{page} links {target}, but {rel} has no heading #{anchor}")
