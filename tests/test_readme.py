"""The README's promise: every snippet and command in it works.

Each ``rotary ...`` command in README.md (code blocks, the verb table and inline code) is
checked: the "training on your own text" block, ``rotary info``, ``train --resume`` and the help
commands run for real on a tiny corpus (training shrunk by appended overrides); the others train
or tokenize at full size, so they are parsed and their recipe with its overrides is resolved and
validated, which is what fails first when an option or a recipe key is renamed. The Python
snippet runs as written against a tiny run at ``runs/demo``.
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
from tests.train_support import write_corpus

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
VERBS = ("demo", "train", "generate", "convert", "info", "tokenizer", "prepare")

# Appended to the README's training commands when they run for real: the same pipeline, tiny.
TINY_TRAIN = ["--model.preset", "tiny", "--model.max_seq_len", "64", "--seq-len", "32", "--batch-size", "2",
              "--max-steps", "2", "--eval-interval", "2", "--eval-batches", "1", "--checkpoint-interval", "2",
              "--threads", "1", "--progress", "false", "--tensorboard", "false"]


def code_blocks(lang: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", TEXT, flags=re.S | re.M)
    return [body for tag, body in blocks if lang is None or tag == lang]


def readme_commands() -> list[list[str]]:
    """Every `rotary ...` command: lines of code blocks and inline code, as argv lists (after
    ``rotary`` or ``-m rotary``); ``VERB`` stands for each verb."""
    found: list[str] = []
    for body in code_blocks(""):
        for line in body.splitlines():  # commands start at column 0; indented lines are output
            line = line.split("  #")[0].rstrip()
            if line.startswith("rotary "):
                found.append(line)
            elif " -m rotary " in line:  # torchrun / accelerate launch
                found.append("rotary " + line.split(" -m rotary ", 1)[1])
    for code in re.findall(r"`(rotary [^`]+)`", TEXT):
        found.append(" ".join(code.split()))  # inline code may wrap across lines
    out: list[list[str]] = []
    for cmd in dict.fromkeys(found):
        argv = shlex.split(cmd)[1:]
        expanded = [[v if a == "VERB" else a for a in argv] for v in VERBS] if "VERB" in argv else [argv]
        out.extend(expanded)
    return out


COMMANDS = readme_commands()


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
    if args.command == "train":
        recipe, rest = split_recipe(extra)
        load_recipe(recipe, parse_overrides(rest))  # the recipe is found, every key exists and types
    elif args.command == "demo":
        load_recipe(args.recipe or DEFAULT_RECIPE, parse_overrides(extra))


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_parses_and_its_recipe_resolves(argv, tmp_path, monkeypatch, capsys):
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

    # the Python snippet, as written, on this tiny run standing in for the demo's
    shutil.copytree(tmp_path / "runs/mine", tmp_path / "runs/demo")
    snippets = code_blocks("python")
    assert len(snippets) == 3  # the third is the `openai` client, run against a server by tests/test_serve.py
    scope: dict = {}
    exec(compile(snippets[0], str(README) + ":python", "exec"), scope)
    assert type(scope["hf_model"]).__name__ == "LlamaForCausalLM"
    assert scope["loss"].ndim == 0 and scope["loss"].item() > 0
    assert pre_printed(capsys)

    # the API section's snippet: a real (tiny) training run through the public names only
    scope = {}
    exec(compile(snippets[1], str(README) + ":python-api", "exec"), scope)
    assert scope["result"].step == 20 and (tmp_path / "runs/api/best/manifest.json").is_file()
    assert pre_printed(capsys)


def pre_printed(capsys: pytest.CaptureFixture[str]) -> bool:
    """The snippet printed a sample (the continuation of "ROMEO:")."""
    return capsys.readouterr().out.strip() != ""


NOT_RUN = [line.strip() for body in code_blocks("") for line in body.splitlines()
           if line.strip().startswith(("make ", ".venv/bin/tensorboard", "torchrun", "accelerate"))]


@pytest.mark.parametrize("line", NOT_RUN)
def test_commands_the_suite_does_not_run(line):
    if line.startswith(("torchrun", "accelerate")):
        pytest.skip("needs several processes (tests/test_distributed.py launches them); the "
                    "`-m rotary ...` part is parsed by test_every_readme_command_parses...")
    if line.startswith("make "):
        pytest.skip("the Makefile's demo/test targets are the demo and this suite themselves")
    pytest.skip("tensorboard is a server that runs until stopped")
