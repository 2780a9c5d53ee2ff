"""Study 4: passkey retrieval. A number is hidden at some depth of filler text and asked for at
the end, as in the context-extension papers (Mohtashami & Jaggi 2023; Chen et al. 2023): "...
The pass key is 72. Remember it. 72 is the pass key. ... What is the pass key? The pass key is"
and the model must continue with 72 (greedy decoding). The keys are the 90 two-digit numbers,
one BPE token each, so that retrieval is one copy (chance: 1.1%).

Models this small do not learn retrieval from Shakespeare alone, so every model of this study is
trained in two stages, both with a trained logits bias that each stage starts at its data's
unigram (``output_bias``): (1) dense copying documents over the keys ("The numbers are 72 15
... Again, the numbers are 72 15 ...") at a short context, to form the induction heads
retrieval is built from; (2) from those weights (``init_from``), a **mixture** of Shakespeare
passages, copying documents and synthetic retrieval examples no longer than the training
context L = 128 tokens (the key at a random depth).

Results: docs/results/passkey.md. The design came out of a plain PyTorch loop (below) in which
it retrieved 20 of 20 keys (prompts within L) 200 steps into stage 2, for two seeds. The
copying documents' framing matters: as sentences, one to a document ("The numbers are ...
Again, the numbers are ..."), the same loop did not copy after 600 steps (3.44 nats, about
no copying), and through ``rotary train`` that version retrieved 2% at L; as bare runs of keys,
eight to a document (``copying_text``), it copies (3.4 nats at step 600, from 4.5). Earlier designs, all 0% at L:

* 300 to 2,000 steps x 8-16 x 128 on mixtures of Shakespeare passages and 20,000 synthetic
  examples, five-digit keys (merged BPE chunks, then spelt digit by digit), with and without
  10,000-40,000 copying documents over digits, the 1,000 commonest words, or ten digits and 50
  words drawn without replacement (4 layers, d = 256). The answers had the right format and a
  wrong number; a copied token cost as much as a new one (e.g. 3.59 against 3.44 nats);
* two-digit one-token keys (1,000 x 8 x 128, 4 layers): the key's second and third
  occurrences cost 4.0-4.9 nats (ln 90 = 4.5); the greedy answer was " 40" whatever the key.

Why, from a copying toy (2 layers, d = 128, 32 x 64 tokens a step, segments "[0] x [1] x" with
x uniform over 62 tokens; rotary's model and transformers' Llama follow the same loss curve
from the same weights, 4.1 nats = no copying, 2.6 at 500 steps = copying), changing one thing
at a time (loss at 500 steps):

* **tokens the copying data never uses**: the same 62 tokens in a vocabulary of 128 stay at
  3.8-4.0 (three seeds), of 4,096 at 4.0; untied embeddings and higher learning rates do not
  help. Leaving those tokens out of the softmax (2.6), or an output bias that starts at the
  data's unigram (0 for the 62, -10 for the rest: 2.6), restores it; a bias that starts at 0
  does not (4.0). Carrying the unigram through the embeddings delays the induction heads;
* **context**: with x uniform over a vocabulary of 256 it copies at T = 64 (3.5) but barely at
  T = 128 (5.2) or 256 (5.3; 5.5 is no copying), at the same tokens a step;
* **the share of copying**: copying over the keys with a unigram bias forms within 500 steps
  when every row copies, not after 750 when half the rows are the retrieval mixture. Hence the
  two stages: the loop's stage 1 (500 steps of copy rows) then stage 2 (70% mixture, bias
  restarted at its unigram) answered 20/20 keys at 100-200 steps into stage 2; without the
  bias neither stage copied.

The models are then asked at L, 2L, 4L, 8L and 16L, at depths 0, 0.25, 0.5, 0.75 and 1 of the
filler, ``TRIALS`` keys per cell: accuracy vs length and depth, one heat map per scheme.
Schemes: rope, rope with YaRN scaling at inference (factor = length / L), alibi, sinusoidal,
none, learned (which cannot read past L).

    python experiments/passkey.py                  # full: 5 trained schemes x 3 seeds
    python experiments/passkey.py --quick --runs-dir DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any

import studylib as lib

import rotary
from rotary import RotaryError, atomic_write_text, generate

SEEDS = [1, 2, 3]
SCHEMES = {"rope": "rope", "alibi": "alibi", "sinusoidal": "sinusoidal", "none": "none", "learned": "learned"}
MULTIPLES = [1, 2, 4, 8, 16]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
KEYS = range(10, 100)  # two-digit keys: one BPE token each, since the tokenizer sees each ~700 times
ANSWER_TOKENS = 4  # generated after the question: the key and its full stop, with room
MODEL = {"preset": "llama-mini", "n_layer": 2, "d_model": 128, "n_head": 4, "n_kv_head": 2}
FULL = {"copy_steps": 600, "copy_batch": 32, "copy_context": 64, "copies": 4000,
        "max_steps": 300, "batch_size": 16, "context": 128, "eval_interval": 250, "eval_batches": 20,
        "checkpoint_interval": 250, "vocab_size": 4096, "trials": 10, "synthetic": 20000, "passages": 2000,
        "repeats": 2500, "passage_chars": 600}
QUICK = {"copy_steps": 4, "copy_batch": 4, "copy_context": 32, "copies": 60,
         "max_steps": 6, "batch_size": 2, "context": 64, "eval_interval": 3, "eval_batches": 1,
         "checkpoint_interval": 6, "vocab_size": 400, "trials": 2, "synthetic": 60, "passage_chars": 300,
         "passages": 60, "repeats": 20, "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1}}


def budget(quick: bool) -> dict[str, Any]:
    return QUICK if quick else FULL


def filler_sentences() -> list[str]:
    return [s.strip() + "." for s in FILLER.split(".") if s.strip()]


def read_key(text: str) -> int | None:
    found = re.search(r"\d+", text)
    return int(found.group()) if found else None


def retrieval_text(key: int, n_filler: int, depth: float) -> str:
    """Filler with the key at ``depth`` (0 = first, 1 = last), then the question (without the answer)."""
    sentences = filler_sentences()
    body = [sentences[i % len(sentences)] for i in range(n_filler)]
    at = round(depth * n_filler)
    body.insert(at, f"The pass key is {key}. Remember it. {key} is the pass key.")
    return " ".join(body) + " " + QUESTION


def copying_text(rng: random.Random, segments: int = 8) -> str:
    """Dense copying over the keys: ``segments`` runs of keys, each followed by " Again" and the
    same keys, so every key of a second half pays the induction heads (find the earlier
    occurrence, copy what followed it). Bare keys, many runs to a document: framed as sentences
    ("The numbers are ... Again, the numbers are ..."), one to a document, the same copying did
    not form at this budget."""
    runs = []
    for _ in range(segments):
        keys = " ".join(str(rng.choice(KEYS)) for _ in range(rng.randint(5, 25)))
        runs.append(f". {keys} Again {keys}")
    return "".join(runs) + "."


def write_jsonl(path: Path, texts: list[str]) -> Path:
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def write_mixture(path: Path, b: dict[str, Any]) -> Path:
    """The retrieval mixture as a .jsonl corpus (split by hash like any file corpus): Shakespeare
    passages, copying documents and synthetic retrieval examples that fit the context L."""
    if path.is_file():
        return path
    rng = random.Random(0)
    works = list(rotary.load_corpus("shakespeare").documents("train"))
    chars = b["passage_chars"]
    passages = [w[i:i + chars] for w in works for i in range(0, len(w) - chars, chars)]
    rng.shuffle(passages)
    texts = passages[: b["passages"]] + [copying_text(rng) for _ in range(b["repeats"])]
    # ~17 tokens of key sentence and question; filler sentences are ~5 tokens each at BPE 4,096
    max_filler = max(1, (b["context"] - 30) // 6)
    for _ in range(b["synthetic"]):
        key = rng.choice(KEYS)
        texts.append(retrieval_text(key, rng.randint(0, max_filler), rng.random()) + f" {key}.")
    rng.shuffle(texts)
    return write_jsonl(path, texts)


def study_data(runs_dir: Path, b: dict[str, Any]) -> tuple[Path, Path, Path]:
    """(tokenizer, mixture shards, copying shards): one tokenizer, trained on the mixture, for both."""
    tag = f"mixture-keys-{b['synthetic']}-{b['passages']}-{b['repeats']}"
    tok_dir, shards = lib.shared_data(runs_dir, str(write_mixture(runs_dir / f"{tag}.jsonl", b)), "bpe",
                                      b["vocab_size"], tag=tag)
    copy_shards = runs_dir / f"data-{tag}" / f"copying-{b['copies']}"
    if not (copy_shards / "meta.json").is_file():
        rng = random.Random(1)
        corpus = write_jsonl(runs_dir / f"copying-{b['copies']}.jsonl", [copying_text(rng) for _ in range(b["copies"])])
        rotary.prepare(str(corpus), tok_dir, copy_shards, progress=False, print_summary=False)
    return tok_dir, shards, copy_shards


def recipes(scheme: str, seed: int, runs_dir: Path, quick: bool) -> list[tuple[Path, dict[str, Any]]]:
    """The two stages of one model, (run dir, recipe) each: dense copying at a short context,
    which forms the induction heads, then the retrieval mixture at L from those weights. Both
    with a trained logits bias that each stage starts at its data's unigram (``output_bias``)."""
    b = budget(quick)
    tok_dir, shards, copy_shards = study_data(runs_dir, b)
    model = {**MODEL, "max_seq_len": b["context"], "output_bias": True, **b.get("model", {}),
             "position": SCHEMES[scheme]}
    common = {"task": "causal_lm", "lr": 1.0e-3, "min_lr": 1.0e-4, "warmup_fraction": 0.05, "weight_decay": 0.0,
              "grad_clip": 1.0, "precision": "auto", "seed": seed, "eval_batches": b["eval_batches"],
              "keep_checkpoints": 1, "log_interval": 50, "progress": False, "tensorboard": False}
    copy_dir, run_dir = runs_dir / f"{scheme}-s{seed}-copying", runs_dir / f"{scheme}-s{seed}"
    # a constant rate while the induction heads form (they appear after ~400 steps in the loop)
    copying = {**common, "min_lr": common["lr"], "name": f"passkey-{scheme}-s{seed}-copying", "model": model,
               "data": {"shards": str(copy_shards), "tokenizer": {"path": str(tok_dir)}},
               "seq_len": b["copy_context"], "batch_size": b["copy_batch"], "max_steps": b["copy_steps"],
               "eval_interval": b["copy_steps"], "checkpoint_interval": b["copy_steps"]}
    retrieval = {**common, "name": f"passkey-{scheme}-s{seed}", "model": {"output_bias": True},
                 "init_from": str(copy_dir), "data": {"shards": str(shards)},
                 "seq_len": b["context"], "batch_size": b["batch_size"], "max_steps": b["max_steps"],
                 "eval_interval": b["eval_interval"], "checkpoint_interval": b["checkpoint_interval"]}
    return [(copy_dir, copying), (run_dir, retrieval)]


def prompts_for(tokenizer: Any, length: int, depth: float, trials: int, seed: int) -> list[tuple[list[int], int]]:
    """``trials`` (prompt ids, key) pairs whose prompts are as long as fits ``length`` tokens with
    the answer (``ANSWER_TOKENS`` are left for it)."""
    rng = random.Random(f"{length}-{depth}-{seed}")
    out = []
    for _ in range(trials):
        key = rng.choice(KEYS)
        lo, hi = 0, 4 * length  # the most filler sentences that fit, by bisection on the token count
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(tokenizer.encode(retrieval_text(key, mid, depth))) <= length - ANSWER_TOKENS:
                lo = mid
            else:
                hi = mid - 1
        out.append((tokenizer.encode(retrieval_text(key, lo, depth)), key))
    return out


def accuracy(run: Path, length: int, depth: float, trials: int, *, context: int, yarn: bool) -> float | None:
    tag = f"passkey_{'yarn' if yarn else 'plain'}_{length}_{depth}.json"

    def compute() -> dict[str, Any]:
        factor = length / context
        try:
            pre = rotary.load(run, which="latest", device="cpu",
                              **({"rope_scaling": "yarn", "rope_factor": factor} if yarn and factor > 1 else {}))
            if pre.model.config.position == "learned" and length > context:
                raise RotaryError(f"learned positions stop at {context}")
        except RotaryError as err:
            return {"accuracy": None, "error": str(err)}
        cases = prompts_for(pre.tokenizer, length, depth, trials, seed=0)
        new = generate(pre.model, [ids for ids, _ in cases], ANSWER_TOKENS, temperature=0.0)
        hits = 0
        for (_, key), out in zip(cases, new):
            found = read_key(pre.tokenizer.decode(out))
            hits += found == key
        return {"accuracy": hits / len(cases), "trials": len(cases)}

    return lib.cached(run / tag, compute)["accuracy"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--runs-dir", type=Path, default=lib.ROOT / "runs" / "studies" / "passkey")
    parser.add_argument("--out", type=Path, default=lib.RESULTS)
    parser.add_argument("--quick", action="store_true", help="the same code on a tiny budget (the test)")
    args = parser.parse_args(argv)
    from rotary import cpu_model
    b = budget(args.quick)
    context = b["context"]
    lengths = [m * context for m in MULTIPLES]
    rows = [(s, False) for s in args.schemes]
    if "rope" in args.schemes:
        rows.insert(1, ("rope", True))
    grid: dict[str, list[list[float | None]]] = {}  # name -> [depth][length] mean accuracy
    seconds: dict[str, Any] = {}
    for scheme in args.schemes:
        seconds[scheme] = lib.spread(
            sum(lib.train_run(run, r, quiet=args.quick).get("train_seconds") or 0.0
                for run, r in recipes(scheme, s, args.runs_dir, args.quick)) for s in args.seeds)
    for scheme, yarn in rows:
        name = f"{scheme}+yarn" if yarn else scheme
        grid[name] = []
        for depth in DEPTHS:
            cells = []
            for n in lengths:
                accs = [accuracy(args.runs_dir / f"{scheme}-s{s}", n, depth, b["trials"], context=context, yarn=yarn)
                        for s in args.seeds]
                accs = [a for a in accs if a is not None]
                cells.append(sum(accs) / len(accs) if accs else None)
            grid[name].append(cells)

    plt = lib.pyplot()
    fig, axes = plt.subplots(1, len(grid), figsize=(3.2 * len(grid), 3.4), squeeze=False)
    for ax, (name, cells) in zip(axes[0], grid.items()):
        values = [[float("nan") if c is None else c for c in row] for row in cells]
        ax.imshow(values, vmin=0, vmax=1, cmap="viridis", origin="upper", aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{m}L" for m in MULTIPLES])
        ax.set_yticks(range(len(DEPTHS)), [f"{d:g}" for d in DEPTHS])
        for (i, row) in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, "—" if v != v else f"{v:.1f}", ha="center", va="center",
                        color="white" if v != v or v < 0.5 else "black", fontsize=7)
        ax.set(title=name, xlabel="prompt length", ylabel="key depth")
    lib.save_figure(fig, args.out / "passkey.png")

    lines = ["# Study 4: passkey retrieval", "",
             f"`python experiments/passkey.py` on {cpu_model()}, 2 threads, `precision: auto`. Models trained in "
             f"two stages with a unigram-started logits bias: {b['copy_steps']} steps x {b['copy_batch']} x "
             f"{b['copy_context']} tokens of copying documents over the keys, then the retrieval mixture "
             f"({b['passages']:,} Shakespeare passages of {b['passage_chars']} characters, {b['repeats']:,} copying "
             f"documents, {b['synthetic']:,} synthetic examples of at most L = {context} tokens), "
             f"{b['max_steps']} steps x {b['batch_size']} x {context} tokens, seeds "
             f"{', '.join(map(str, args.seeds))}; {b['trials']} keys per cell per seed, greedy decoding. "
             "Accuracy averaged over depths (0, 0.25, 0.5, 0.75, 1) and seeds; the heat maps split it by depth.",
             *(["", "**--quick budget (a test of the code, not a result).**"] if args.quick else []),
             "", "| scheme | " + " | ".join(f"{m}L = {m * context}" for m in MULTIPLES) + " | train s |",
             "|---|" + "---|" * (len(lengths) + 1)]
    for name, cells in grid.items():
        means = []
        for j in range(len(lengths)):
            col = [row[j] for row in cells if row[j] is not None]
            means.append(f"{sum(col) / len(col):.2f}" if col else "—")
        base = name.split("+")[0]
        lines.append(f"| {name} | " + " | ".join(means) + f" | {lib.pm(seconds[base], 0)} |")
    lines += ["", "![passkey.png](passkey.png)"]
    lib.write_results(args.out, "passkey", {"budget": b, "seeds": args.seeds, "lengths": lengths, "depths": DEPTHS,
                                            "grid": grid}, lines)
    print(f"wrote {args.out / 'passkey.md'}")


if __name__ == "__main__":
    main()
