"""The `rotary` command: help, version, `info`, and one-line user errors with exit code 2."""

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rotary
from rotary import cli
from rotary.commands import info
from rotary.errors import RotaryError
from rotary.model.config import ModelConfig
from rotary.model.presets import PRESETS


def run_module(*args):
    return subprocess.run(
        [sys.executable, "-m", "rotary", *args], capture_output=True, text=True, timeout=120
    )


def test_help_exits_zero_and_lists_verbs():
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: rotary" in proc.stdout
    assert "info" in proc.stdout
    assert proc.stderr == ""


def test_version_exits_zero():
    proc = run_module("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rotary {rotary.__version__}"


def test_info_lists_presets():
    proc = run_module("info")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, cfg in PRESETS.items():
        row = [line for line in lines if line.split()[:1] == [name]]
        assert len(row) == 1, (name, proc.stdout)
        fields = row[0].split()
        layers = f"{cfg.n_layer}+{cfg.decoder_layers}" if cfg.n_decoder_layer is not None else str(cfg.n_layer)
        assert fields[1] == layers and int(fields[2]) == cfg.d_model
        millions = cfg.estimate_num_parameters() / 1e6
        assert fields[-2] == f"{millions:.1f}M" and fields[-1] == cfg.position
    assert "CPU fp32 GEMM: " in proc.stdout


@pytest.mark.parametrize("verb", ["info", "train"])
def test_a_bad_cpu_gemm_setting_is_one_line_and_exit_2_before_any_output(verb, monkeypatch, tmp_path):
    monkeypatch.setenv("ROTARY_CPU_GEMM", "fastest")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
    args = ["train", str(recipe), "--output-dir", str(tmp_path / "run")] if verb == "train" else [verb]
    proc = run_module(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "ROTARY_CPU_GEMM: unknown CPU GEMM backend 'fastest'" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "run").exists()


def test_no_verb_is_a_usage_error_with_help_on_stderr(capsys):
    assert cli.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: rotary" in err and "COMMAND" in err
    assert cli.main(["tokenizer"]) == 2  # a verb that needs a subcommand
    out, err = capsys.readouterr()
    assert out == "" and "usage: rotary tokenizer" in err


NO_TORCH = """
import sys
import rotary.cli
try:
    code = rotary.cli.main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "numpy", "tokenizers", "transformers") if m in sys.modules)
print("HEAVY", heavy, "CODE", code)
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], [], ["no-such-verb"], ["train", "--help"], ["generate", "--help"],
    ["convert", "--help"], ["prepare", "--help"], ["tokenizer", "train", "--help"], ["demo", "--help"],
    ["generate", "runs/x"],  # a usage error: --prompt is required
])
def test_help_version_and_usage_errors_do_not_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] CODE" in proc.stdout, (proc.stdout[-500:], proc.stderr[-2000:])
    assert "CODE 0" in proc.stdout if "--help" in args or "--version" in args else "CODE 2" in proc.stdout


def test_import_rotary_is_light_and_its_names_still_resolve():
    code = ("import sys, rotary; assert 'torch' not in sys.modules; "
            "from rotary import CausalLM, load, PRESETS; import rotary as r; "
            "assert r.hf.to_hf and r.MaskedLM and r.get_preset('tiny') and 'torch' in sys.modules; "
            "assert set(r.__all__) <= set(dir(r)); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_train_help_lists_every_recipe_key_with_type_default_and_doc():
    from rotary.train.config import TrainConfig

    proc = run_module("train", "--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()

    def row(key):
        found = [line for line in lines if line.split()[:1] == [key]]
        assert len(found) == 1, (key, proc.stdout)
        return found[0]

    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("model", "data"):
            assert f.metadata["help"] in row(f.name)
    assert "int = 1000  optimizer steps to train" in row("max_steps")
    assert "number of Transformer blocks" in row("model.n_layer") and "= 6 " in row("model.n_layer")
    assert "bpe|wordpiece|char = bpe" in row("data.tokenizer.kind")
    assert "shakespeare" in proc.stdout  # the built-in recipes are named


@pytest.mark.parametrize("argv, recipe, overrides", [
    (["--name", "mlm", "--task", "masked_lm"], None, {"name": "mlm", "task": "masked_lm"}),
    (["--name=mlm", "--task=masked_lm"], None, {"name": "mlm", "task": "masked_lm"}),
    (["r.yaml", "--max-steps", "3"], "r.yaml", {"max_steps": 3}),
    (["--max-steps", "3", "r.yaml"], "r.yaml", {"max_steps": 3}),
    (["--compile", "r.yaml", "--lr=0.001"], "r.yaml", {"compile": True, "lr": 0.001}),
    (["--compile", "false", "r.yaml"], "r.yaml", {"compile": False}),
    (["--compile", "blocks", "r.yaml"], "r.yaml", {"compile": "blocks"}),  # a choice besides true/false
    (["r.yaml", "--compile"], "r.yaml", {"compile": True}),
    # the spelling of prepare's and tokenizer train's flag: a bare --no-KEY is KEY: false
    (["--no-progress", "r.yaml"], "r.yaml", {"progress": False}),
    (["r.yaml", "--no-progress", "--max-steps", "3"], "r.yaml", {"progress": False, "max_steps": 3}),
])
def test_train_finds_the_recipe_among_overrides_in_both_spellings(argv, recipe, overrides):
    from rotary.commands.train import split_recipe
    from rotary.config import parse_overrides

    got_recipe, rest = split_recipe(argv)
    assert got_recipe == recipe and parse_overrides(rest) == overrides


@pytest.mark.parametrize("argv, says", [
    (["--compile", "maybe"], "--compile: 'maybe' is not one of auto, blocks, true, false"),
    (["r.yaml", "--compile", "maybe"], "--compile: 'maybe' is not one of"),  # was "two recipes given"
    (["--tensorboard", "maybe", "r.yaml"], "--tensorboard: 'maybe' is not one of true, false"),
])
def test_a_bad_value_after_a_boolean_flag_is_named_as_such(argv, says):
    from rotary.commands.train import split_recipe

    with pytest.raises(RotaryError, match=re.escape(says)):
        split_recipe(argv)


def test_a_recipe_that_is_not_utf8_or_gives_a_key_twice_is_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: x\nmax_steps: 3\nlr: 0.1\nmax_steps: 4\n")
    for recipe, says in ((bad, "is not UTF-8 text"), (twice, "line 4: key 'max_steps' given twice")):
        assert cli.main(["train", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, home", [
    ("--val-fraction", "data.val_fraction"), ("--corpus", "data.corpus"), ("--n-layer", "model.n_layer"),
    ("--test-fraction", "data.corpus_options.test_fraction"),
    ("--data.test-fraction", "data.corpus_options.test_fraction"),  # a labelled corpus's option
])
def test_a_key_at_the_wrong_level_is_pointed_to_where_it_lives(override, home, tmp_path, capsys):
    assert cli.main(["train", "demo", override, "0.2", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"it is {home} (on the command line --{home} VALUE)" in err, err


def test_yaml_merge_keys_may_be_overridden_without_counting_as_a_repeat(tmp_path):
    from rotary.config import load_yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: &b {n_layer: 2, d_model: 64}\nmodel: {<<: *b, n_layer: 4}\n")
    assert load_yaml(recipe)["model"] == {"n_layer": 4, "d_model": 64}


def test_demo_refuses_a_recipe_it_cannot_score_before_training(fake_train, tmp_path, capsys):
    assert cli.main(["demo", "--recipe", "peoples-daily-mlm", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trains masked_lm: run it with `rotary train peoples-daily-mlm`" in err
    assert not fake_train.calls  # was: trained for minutes, then KeyError 'bits_per_byte'


def test_demo_errors_name_the_demos_own_flags(monkeypatch, tmp_path, capsys):
    from rotary.train import loop

    def refuses(cfg, **kwargs):
        raise RotaryError(f"{cfg.run_dir} holds a different run (model differs from this recipe): use "
                          "--output-dir for a new run or --overwrite to replace it")

    monkeypatch.setattr(loop, "train", refuses)
    assert cli.main(["demo", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--fresh to replace it" in err and "--overwrite" not in err  # demo has no --overwrite


class FakeTrain:
    """Stands in for the trainer: records the recipe and the flags it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, *, resume, overwrite, verify=True):
        from rotary.train.loop import TrainResult

        self.calls.append((cfg, resume, overwrite))
        return TrainResult(run_dir=cfg.run_dir, step=3, stopped="max_steps", last_eval={"loss": 1.5})


@pytest.fixture
def fake_train(monkeypatch):
    from rotary.train import loop

    fake = FakeTrain()
    monkeypatch.setattr(loop, "train", fake)
    monkeypatch.delenv("RANK", raising=False)
    return fake


def test_train_without_a_recipe_takes_name_and_task_from_the_command_line(fake_train, capsys):
    assert cli.main(["train", "--name", "mlm", "--task", "masked_lm", "--max-steps", "2"]) == 0
    cfg = fake_train.calls[0][0]
    assert (cfg.name, cfg.task, cfg.max_steps) == ("mlm", "masked_lm", 2)
    assert capsys.readouterr().out.startswith("runs/mlm: step 3")


def test_train_names_a_builtin_recipe_from_anywhere(fake_train, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the repository: no recipes/ here
    assert cli.main(["train", "shakespeare", "--max-steps", "2"]) == 0
    assert cli.main(["train", "recipes/shakespeare.yaml"]) == 0
    assert [c[0].name for c in fake_train.calls] == ["shakespeare", "shakespeare"]
    assert cli.main(["train", "nosuch"]) == 2
    err = capsys.readouterr().err
    names = ("chat-base, chat-sft, chinese-mix-mlm, chinese-sentiment, demo, openwebtext-gqa, "
                 "peoples-daily-electra, "
                 "peoples-daily-mlm, roformer-base, "
             "shakespeare, tatoeba-zh-en, "
             "tatoeba-zh-en-sinusoidal, thucnews, wikipedia-bpe32k")
    assert err.count("\n") == 1 and f"recipe not found: nosuch (built-in recipes: {names}" in err


def test_resume_and_overwrite_together_are_an_error(fake_train, capsys):
    assert cli.main(["train", "shakespeare", "--resume", "--overwrite"]) == 2
    assert "--resume" in capsys.readouterr().err and not fake_train.calls


def test_resume_without_a_recipe_uses_the_runs_recipe(fake_train, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: earlier\nmax_steps: 7\nbatch_size: 3\n")
    assert cli.main(["train", "--resume", "--output-dir", str(run), "--max-steps", "9"]) == 0
    cfg, resume, overwrite = fake_train.calls[0]
    assert (cfg.name, cfg.batch_size, cfg.max_steps, cfg.output_dir) == ("earlier", 3, 9, str(run))
    assert resume and not overwrite
    assert cli.main(["train", "--resume", "--output-dir", str(tmp_path / "none")]) == 2
    assert "none does not exist: point --output-dir at the run" in capsys.readouterr().err


def test_only_rank_0_prints_the_summary_and_warnings(fake_train, monkeypatch, capsys):
    args = ["train", "--max-steps", "5", "--warmup-steps", "10"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert out.count("step 3 (max_steps)") == 1
    assert err == ("rotary: warning: warmup (10 steps) is not shorter than max_steps (5): the learning "
                   "rate never reaches its peak (lower warmup_steps or raise max_steps)\n")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(args) == 0
    assert capsys.readouterr() == ("", "")


class FakeTokenizer:
    eos_id, pad_id = 0, None

    def encode(self, text):
        return [ord(c) % 50 + 1 for c in text]

    def decode(self, ids):
        return "".join(chr(96 + i % 26) for i in ids)


@pytest.mark.parametrize("kind, args, needle", [
    ("masked", [], "generation needs a causal LM, and this model is a masked LM"),
    ("causal", ["--top-p", "2"], "top_p must be in (0, 1]"),
    ("causal", ["--temperature", "-1"], "temperature must be >= 0"),
    ("causal", ["--max-new-tokens", "-1"], "--max-new-tokens must be >= 1"),
    ("causal", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),  # streamed the prompt, then failed
    ("causal", ["--prompt", ""], "encodes to no tokens"),
])
def test_generate_checks_everything_before_printing_the_prompt(kind, args, needle, monkeypatch, capsys):
    from rotary.infer import pretrained
    from rotary.model import CausalLM, MaskedLM

    cfg = ModelConfig.from_dict({"preset": "tiny", "causal": kind == "causal"})
    model = (CausalLM if kind == "causal" else MaskedLM)(cfg).eval()
    fake = pretrained.Pretrained(model, FakeTokenizer(), Path("runs/x"), {"task": kind})
    monkeypatch.setattr(pretrained, "load", lambda *a, **k: fake)
    argv = ["generate", "runs/x", *(["--prompt", "ROMEO:"] if "--prompt" not in args else []), *args]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and needle in err and err.count("\n") == 1
    # a verb named in an error exists
    assert ("rotary fill-mask" in err) == (kind == "masked") and "fill-mask" in cli.build_parser().format_help()


def test_no_new_tokens_is_refused_before_the_first_piece_in_python_too():
    from rotary.infer import pretrained
    from rotary.model import CausalLM

    model = CausalLM(ModelConfig.from_dict({"preset": "tiny", "causal": True})).eval()
    pre = pretrained.Pretrained(model, FakeTokenizer(), Path("runs/x"), {"task": "causal_lm"})
    for call in (lambda: next(pre.stream("ROMEO:", 0)), lambda: pre.generate("ROMEO:", 0)):
        with pytest.raises(RotaryError, match="max_new_tokens must be >= 1, got 0"):
            call()


def test_generate_help_explains_every_option_with_its_default():
    proc = run_module("generate", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for needle in ("--max-new-tokens MAX_NEW_TOKENS tokens to generate", "(default: 200)", "(default: 0.8)",
                   "--top-k TOP_K sample among", "--seed SEED random seed", "--device DEVICE auto"):
        assert needle in text, needle


def test_tokenizer_train_prints_one_line(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"the cat sat on the mat {i} times" for i in range(50)))
    proc = run_module("tokenizer", "train", "--corpus", str(corpus), "--kind", "bpe", "--vocab-size", "270",
                      "--out", str(tmp_path / "tok"))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.startswith(str(tmp_path / "tok"))


def test_tokenizer_train_warns_about_a_mostly_latin1_file(tmp_path):
    corpus = tmp_path / "fr.txt"
    corpus.write_bytes("\n\n".join(f"le caf\u00e9 {i} est tr\u00e8s bon, d\u00e9j\u00e0" for i in range(50))
                       .encode("latin-1"))
    proc = run_module("tokenizer", "train", "--corpus", str(corpus), "--kind", "bpe", "--vocab-size", "270",
                      "--out", str(tmp_path / "tok"))
    assert proc.returncode == 0, proc.stderr
    assert "rotary: warning: 200 undecodable byte sequence(s)" in proc.stderr and "iconv" in proc.stderr


def test_rotarys_warnings_are_one_line_without_source(tmp_path):
    pytest.importorskip("transformers")
    script = (
        "import sys, rotary.cli\n"
        "from rotary.commands import info\n"
        "def run(args):\n"
        "    from rotary import CausalLM, get_preset\n"
        "    from rotary.hf import to_hf\n"
        "    to_hf(CausalLM(get_preset('tiny').replace(dropout=0.1)))\n"
        "info.run = run\n"
        "sys.exit(rotary.cli.main(['info']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("rotary: warning: Llama has no residual/embedding dropout: dropout=0.1 is not "
                           "exported (inference outputs are unaffected)\n")


def test_rotary_error_in_a_verb_is_one_line_and_exit_2(monkeypatch, capsys):
    def broken(args):
        raise RotaryError("config file not found: nowhere.yaml")

    monkeypatch.setattr(info, "run", broken)  # register() picks up the module's run
    code = cli.main(["info"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err == "rotary: error: config file not found: nowhere.yaml\n"
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_bugs_keep_their_traceback(monkeypatch):
    def buggy(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(info, "run", buggy)
    with pytest.raises(ZeroDivisionError):
        cli.main(["info"])


@pytest.mark.parametrize("argv,says", [
    (["generate", "runs/x"], "the following arguments are required: --prompt"),
    (["generate", "runs/x", "--prompt", "a", "--max-new-tokens", "many"], "invalid int value: 'many'"),
    (["tokenizer", "train", "--kind", "sentencepiece"], "invalid choice: 'sentencepiece'"),
    (["info", "--bogus"], "unrecognized arguments: --bogus (see `rotary info --help`)"),  # the verb's own help
    # a typo of a required option was reported as the option missing
    (["generate", "runs/x", "--promt", "a"], "unrecognized argument --promt (did you mean --prompt?)"),
    (["tokenizer", "train", "--corpus", "c", "--kind", "bpe", "--outt", "t"],
     "unrecognized argument --outt (did you mean --out?) (see `rotary tokenizer train --help`)"),
    # an abbreviation argparse accepts is not the typo: the missing option is named
    (["prepare", "--corpus", "c", "--tokenize", "t"], "the following arguments are required: --out"),
    (["fill-mask", "runs/x", "--text", "a", "--topk", "3"],
     "unrecognized argument --topk (did you mean --top-k?) (see `rotary fill-mask --help`)"),
])
def test_usage_errors_are_one_line_naming_the_verbs_help(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err  # no usage block before it
    assert err.startswith("rotary: error: ") and says in err and "--help`" in err, err


def test_unknown_verb_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-verb"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_public_name_resolves_to_what_it_names():
    """rotary.__all__ is the pinned API: each name loads, and none is shadowed by a submodule."""
    import types

    import rotary

    for name in rotary.__all__:
        value = getattr(rotary, name)
        assert not isinstance(value, types.ModuleType), name
    assert callable(rotary.train_model) and rotary.train_model.__module__ == "rotary.train.loop"
    assert rotary.hf.to_hf and rotary.load.__module__ == "rotary.infer.pretrained"


PUBLIC_MODULES = ("rotary", "rotary.hf", "rotary.baselines")
# The benchmarks that time the parts of a training step or a decode kernel import those parts;
# each such import is listed here, so that a new one is a decision, not an accident.
BENCH_INTERNALS = {
    "ab.py": {"rotary.train.schedule", "rotary.train.step", "rotary.model.transformer", "rotary.train.compilation"},
    "profile_step.py": {"rotary.model.transformer", "rotary.train.compilation", "rotary.train.schedule",
                        "rotary.train.step", "rotary.ops", "rotary.device"},
    "train.py": {"rotary.train.metrics", "rotary.model.transformer", "rotary.train.compilation", "rotary.device",
                 "rotary.ops"},
    "generate.py": {"rotary.ops.gemm", "rotary.ops.int8_linear"},
    "epoch_time.py": {"rotary.data.seq2seq", "rotary.data.seq2seq_run"},  # the epoch's micro-batch count
}


@pytest.mark.parametrize("folder", ["experiments", "bench"])
def test_the_studies_and_benchmarks_use_the_public_api(folder):
    """experiments/ and bench/ import rotary's pinned names (``from rotary import X``), rotary.hf
    and rotary.baselines: the internals may move without breaking a study or a benchmark. The
    benchmarks of a step's parts are the listed exceptions."""
    import ast

    import rotary

    scripts = sorted((Path(__file__).resolve().parents[2] / folder).glob("*.py"))
    assert scripts
    for script in scripts:
        allowed = PUBLIC_MODULES + tuple(BENCH_INTERNALS.get(script.name, ()) if folder == "bench" else ())
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rotary"):
                assert node.module in allowed, f"{folder}/{script.name}:{node.lineno} imports {node.module}"
                if node.module == "rotary":
                    assert {a.name for a in node.names} <= set(rotary.__all__) | {"hf"}, script.name
            if isinstance(node, ast.Import):
                assert all(a.name in allowed or not a.name.startswith("rotary") for a in node.names)


def subcommand_help(*path: str) -> str:
    """The --help text of ``rotary PATH...``, whitespace joined, built in-process."""
    parser = cli.build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return " ".join(parser.format_help().split())


def all_verbs() -> list[tuple[str, ...]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verbs = []
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        verbs += [(name, n) for n in nested[0].choices] if nested else [(name,)]
    return verbs


@pytest.mark.parametrize("verb", all_verbs(), ids=" ".join)
def test_help_states_each_default_once_and_never_none(verb):
    text = subcommand_help(*verb)
    assert "(default: None)" not in text and "(default: False)" not in text, text
    assert not re.search(r"\(default[^)]*\)\s*\(default", text), text


def test_corpus_help_lists_the_registry_and_finetune_help_names_causal_runs():
    from rotary.data.parallel import BUILTIN_PARALLEL
    from rotary.data.sources import CORPORA

    for verb in (("tokenizer", "train"), ("prepare",), ("eval",)):
        text = subcommand_help(*verb)
        assert all(name in text for name in CORPORA), (verb, text)
    assert all(name in subcommand_help("eval") for name in BUILTIN_PARALLEL)
    assert "causal_lm run" in subcommand_help("finetune")


@pytest.mark.parametrize("override, needle", [
    (["--seed", "-1"], "seed must be in 0..2**32-1"), (["--beta1", "2"], "beta1 and beta2"),
    (["--grad-clip", "-1"], "grad_clip must be positive"), (["--min-lr", "1"], "min_lr must be in"),
    (["--warmup-steps", "-5"], "warmup_steps must be >= 0"), (["--weight-decay", "-1"], "weight_decay must be"),
    (["--threads", "0"], "threads must be at least 1"), (["--eval-batches", "0"], "eval_batches must be at least 1"),
])
def test_harmful_training_values_are_refused_before_the_run_directory_exists(override, needle, tmp_path, capsys):
    """They trained silently wrong (a negative clip flips the gradients; min_lr above lr), crashed
    after creating the run (seed -1: numpy), or failed after training (eval_batches 0)."""
    out = tmp_path / "run"
    assert cli.main(["train", "demo", "--output-dir", str(out), *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rotary: error:") and needle in err[0], err
    assert not out.exists()


def test_batch_and_eval_outputs_that_are_the_wrong_kind_of_path_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "in.txt").write_text("a\n")
    for argv, needle in ((["classify", "RUN", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "adir")],
                          "is a directory"),
                         (["fill-mask", "RUN", "--text", "[MASK]", "--output", str(tmp_path / "adir")],
                          "is a directory"),
                         (["classify", "RUN", "--input", str(tmp_path / "adir")], "is a directory"),
                         (["eval", "RUN", "--corpus", "shakespeare", "--out", str(tmp_path / "afile")], "is a file"),
                         (["eval", "RUN", "--corpus", "shakespeare", "--batch-size", "0"], "--batch-size")):
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_settings_of_which_one_is_ignored_are_warned_about():
    from rotary.train.config import load_recipe
    from rotary.train.finetune import finetune_defaults

    both = load_recipe("shakespeare", {"warmup_steps": 5}).warnings()
    assert any("warmup_steps 5 and warmup_fraction" in w and "warmup_steps is used" in w for w in both), both
    dropped = load_recipe(None, {"dropout": 0.1, "model.dropout": 0.3}).warnings()
    assert any("dropout 0.1 replaces model.dropout 0.3" in w for w in dropped), dropped
    assert not load_recipe(None, {"warmup_steps": 5}).warnings()
    # finetune's own defaults never stand beside what the user named
    overrides = {"data.corpus": "x.jsonl", "warmup_steps": 5, "model.dropout": 0.3}
    cfg = load_recipe(None, overrides, finetune_defaults(None, {"data": {"corpus": "x.jsonl"}, "warmup_steps": 5,
                                                                "model": {"dropout": 0.3}}))
    assert (cfg.warmup_fraction, cfg.dropout) == (None, 0.3) and not cfg.warnings()


@pytest.mark.parametrize("argv, says", [
    (["serve", "runs/none", "--max-len", "0"], "--max-len must be at least 2"),  # silently meant the model's
    (["classify", "runs/none", "--text", " "], "--text is empty"),  # classified [CLS][SEP]
])
def test_values_that_meant_nothing_are_refused_before_loading(argv, says, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_a_mapping_given_as_one_value_shows_the_dotted_spelling(tmp_path, capsys):
    argv = ["train", "demo", "--data.corpus-options", "test_fraction=0.1", "--output-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data.corpus_options.test_fraction 0.1" in err, err
