"""Study 4: passkey retrieval. A five-digit number is hidden at some depth of filler text and
asked for at the end, as in the context-extension papers (Mohtashami & Jaggi 2023; Chen et al.
2023): "... The pass key is 72618. Remember it. 72618 is the pass key. ... What is the pass key?
The pass key is" and the model must continue with 72618 (greedy decoding).

Models this small do not learn retrieval from Shakespeare alone, so every model of this study is
trained on a **mixture**: passages of the Shakespeare training works and (most of the tokens)
synthetic retrieval examples no longer than the training context L = 128 tokens (the key at a
random depth). No budget tried so far learnt the retrieval itself, even at L (every model
answers in the right format, with a number that is not the key):

* 300 steps x 16 x 128, half the documents synthetic: one fixed number for every prompt, 0%;
* 600 steps x 16 x 128, 20,000 synthetic examples + 4,000 passages: the key's first digits
  right when it is a few tokens back, 0/5 whole keys at L (rope, seed 1);
* 1,500 steps x 8 x 128, the same mixture: 0% in all 25 cells (rope, seed 1, 10 keys a cell);
  the second and third occurrences of a key cost as many nats as the first: no copying at all;
* 600 steps x 16 x 128 with 10,000 dense copying documents added ("The numbers are ... Again,
  the numbers are ..."): 0%, and no copying of the repeated numbers either;
* keys spelt digit by digit (one token a digit, as below), 600 x 16 and then 2,000 x 8 with
  20,000 copying documents and 2,000 passages: 0%; each repeated digit still costs ln 10 nats.
  The models do learn where a list ends (they attend by position) but not what it held: the
  induction heads that retrieval needs have not formed;
* the copying documents drawn from the 1,000 commonest words instead of digits (2,000 x 8): 0%,
  and the copied half of a document cost 5.94 nats a token against 5.66 for its first half;
* the copying alphabet cut to the ten digits and 50 words, items drawn without replacement
  (every copied token predictable from the one before it), 40,000 such documents (the current
  ``FULL``, 2,000 x 8): 0% at L and 2L, and no copying (3.59 nats a copied token against 3.44
  for the first half; at 1,000 steps 3.52 against 3.46).

Neither rotary's model nor its trainer is the cause: on a copying toy (2 layers, d = 128, 32 x
64 tokens a step, segments "[0] x [1] x" with x uniform over 62 tokens, nothing but copying) it
and transformers' Llama, from the same initial weights, follow the same loss curve, which falls
from 4.1 nats (no copying) to 2.6 within 500 steps; and a plain PyTorch loop (fp32, AdamW, no
schedule) on the 1,000-word mixture and this study's model copies no better after 700 steps
than the trainer (6.0 nats a copied token).

What does stop it, found by changing one thing of that toy at a time (loss at 500 steps):

* **tokens the copying data never uses**: with the same 62 tokens in a vocabulary of 128 the
  loss stays at 3.8-4.0 (three seeds), at 4,096 at 4.0; untied embeddings and higher learning
  rates do not help. Leaving those tokens out of the softmax (2.6), or an output bias that
  starts at the data's unigram (0 for the 62, -10 for the rest: 2.6), restores it; a bias that
  starts at 0 does not (4.0). Carrying the unigram through the embeddings delays the induction
  heads. With x uniform over the whole vocabulary it copies too (3.1 and 3.5 at V = 128 and 256,
  where 4.8 and 5.5 is no copying);
* **context**: the same toy at V = 256 and the same tokens a step copies at T = 64 (3.5) but
  barely at T = 128 (5.2) or 256 (5.3; 5.5 is no copying);
* **the share of copying**: with 32 x 64 copy rows over the 90 two-digit keys and such a bias
  the toy's model copies within 500 steps (3.0 nats against 4.4), but with half the rows from the retrieval
  mixture not after 750; and two-digit keys that are one token each (1,000 x 8 x 128 with the
  4-layer model) still scored 0%: the key's second and third occurrences cost 4.0-4.9 nats
  (ln 90 = 4.5); the greedy answer is " 40" whatever the key.

So the full run is not made yet. The next design to try is a curriculum: first dense copying
over the key tokens at T = 64 with an output bias that starts at the unigram (so
``CausalLM`` would need a trained, unigram-initialised logits bias), then the retrieval mixture
at L through ``init_from``, checking that the copying survives (a character-level curriculum
without the bias lost it within 100 steps of the mixture). Or a GPU budget a hundred times this.

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
from collections import Counter
from pathlib import Path
from typing import Any

import studylib as lib

import rotary
from rotary.errors import RotaryError
from rotary.generate import generate
from rotary.io import atomic_write_text

SEEDS = [1, 2, 3]
SCHEMES = {"rope": "rope", "alibi": "alibi", "sinusoidal": "sinusoidal", "none": "none", "learned": "learned"}
MULTIPLES = [1, 2, 4, 8, 16]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
ANSWER_TOKENS = 12  # generated after the question: the spelt key and its full stop, with room
FULL = {"max_steps": 2000, "batch_size": 8, "context": 128, "eval_interval": 500, "eval_batches": 20,
        "checkpoint_interval": 500, "vocab_size": 4096, "trials": 10, "synthetic": 20000, "passages": 2000,
        "repeats": 40000,
        "passage_chars": 600}
QUICK = {"max_steps": 6, "batch_size": 2, "context": 64, "eval_interval": 3, "eval_batches": 1,
         "checkpoint_interval": 6, "vocab_size": 400, "trials": 2, "synthetic": 60, "passage_chars": 300,
         "passages": 60, "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1}}


def budget(quick: bool) -> dict[str, Any]:
    return QUICK if quick else FULL


def filler_sentences() -> list[str]:
    return [s.strip() + "." for s in FILLER.split(".") if s.strip()]


def spell(key: int) -> str:
    """The key digit by digit ("7 2 6 1 8"): one token a digit under byte-level BPE, as Llama's
    tokenizer splits numbers into digits. Merged digit chunks (" 726" "18") are thousands of rare
    tokens, and copying them was not learnt at this budget."""
    return " ".join(str(key))


def read_key(text: str) -> int | None:
    found = re.search(r"\d(?: ?\d){4}", text)
    return int(found.group().replace(" ", "")) if found else None


def retrieval_text(key: int, n_filler: int, depth: float, rng: random.Random | None = None) -> str:
    """Filler with the key at ``depth`` (0 = first, 1 = last), then the question (without the answer)."""
    sentences = filler_sentences()
    body = [sentences[i % len(sentences)] for i in range(n_filler)]
    at = round(depth * n_filler)
    body.insert(at, f"The pass key is {spell(key)}. Remember it. {spell(key)} is the pass key.")
    return " ".join(body) + " " + QUESTION


def copy_alphabet(works: list[str], size: int = 50) -> list[str]:
    """The alphabet of the copying documents: the ten digits and the ``size`` commonest lower-case
    words of the training works. A document draws its items without replacement, so the token
    before an item always says which item comes next: the one-token induction heads that
    retrieval is built from pay off on every copied token. (Digit strings alone repeat their
    digits, and a 1,000-word alphabet spreads the signal over too many tokens. Neither formed
    induction heads at this budget, and at 2,000 steps this alphabet did not either.)"""
    counts = Counter(w for text in works for w in re.findall(r"\b[a-z]+\b", text))
    return list("0123456789") + [w for w, _ in counts.most_common(size)]


def write_mixture(path: Path, b: dict[str, Any]) -> Path:
    """The training mixture as a .jsonl corpus (split by hash like any file corpus): Shakespeare
    passages and synthetic retrieval examples that fit the training context."""
    if path.is_file():
        return path
    rng = random.Random(0)
    works = list(rotary.load_corpus("shakespeare").documents("train"))
    chars = b["passage_chars"]
    passages = [w[i:i + chars] for w in works for i in range(0, len(w) - chars, chars)]
    rng.shuffle(passages)
    passages = passages[: b["passages"]]
    # ~17 tokens of key sentence and question; filler sentences are ~5 tokens each at BPE 4,096
    max_filler = max(1, (b["context"] - 30) // 6)
    docs = [{"text": p} for p in passages]
    # dense copying (every number of the second half is in the first): what forms the induction
    # heads retrieval needs, far sooner than the few copyable tokens of a passkey example
    alphabet = copy_alphabet(works)
    for _ in range(b.get("repeats", 0)):
        words = " ".join(rng.sample(alphabet, rng.randint(8, 30)))
        docs.append({"text": f"The words are {words}. Again, the words are {words}."})
    for _ in range(b["synthetic"]):
        key = rng.randrange(10000, 100000)
        n = rng.randint(0, max_filler)
        docs.append({"text": retrieval_text(key, n, rng.random(), rng) + f" {spell(key)}."})
    rng.shuffle(docs)
    atomic_write_text(path, "".join(json.dumps(d) + "\n" for d in docs))
    return path


def recipe(scheme: str, seed: int, runs_dir: Path, quick: bool) -> dict[str, Any]:
    b = budget(quick)
    # a new budget's mixture is a new corpus ("spelt": keys digit by digit)
    tag = f"mixture-items-{b['synthetic']}-{b['passages']}-{b.get('repeats', 0)}"
    corpus = write_mixture(runs_dir / f"{tag}.jsonl", b)
    tok_dir, shards = lib.shared_data(runs_dir, str(corpus), "bpe", b["vocab_size"], tag=tag)
    model = {"preset": "llama-mini", "n_layer": 4, "d_model": 256, "n_head": 4, "n_kv_head": 2,
             "max_seq_len": b["context"], **b.get("model", {}), "position": SCHEMES[scheme]}
    return {"name": f"passkey-{scheme}-s{seed}", "task": "causal_lm", "model": model,
            "data": {"shards": str(shards), "tokenizer": {"path": str(tok_dir)}},
            "seq_len": b["context"], "batch_size": b["batch_size"], "max_steps": b["max_steps"],
            "lr": 2.0e-3, "min_lr": 1.0e-4, "warmup_fraction": 0.05, "weight_decay": 0.1, "grad_clip": 1.0,
            "precision": "auto", "seed": seed, "eval_interval": b["eval_interval"], "eval_batches": b["eval_batches"],
            "checkpoint_interval": b["checkpoint_interval"], "keep_checkpoints": 2, "log_interval": 10,
            "progress": False, "tensorboard": False}


def prompts_for(tokenizer: Any, length: int, depth: float, trials: int, seed: int) -> list[tuple[list[int], int]]:
    """``trials`` (prompt ids, key) pairs whose prompts are as long as fits ``length`` tokens with
    the answer (``ANSWER_TOKENS`` are left for it)."""
    rng = random.Random(f"{length}-{depth}-{seed}")
    out = []
    for _ in range(trials):
        key = rng.randrange(10000, 100000)
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
    from rotary.device import cpu_model

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
            lib.train_run(args.runs_dir / f"{scheme}-s{s}", recipe(scheme, s, args.runs_dir, args.quick),
                          quiet=args.quick).get("train_seconds") for s in args.seeds)
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
             f"`python experiments/passkey.py` on {cpu_model()}, 2 threads, `precision: auto`. Models trained on "
             f"the retrieval mixture ({b['passages']:,} Shakespeare passages of {b['passage_chars']} characters, "
             f"{b['synthetic']:,} synthetic examples of at most L = {context} tokens), "
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
