"""The seed projects' recipes at toy width: each one's settings as the seed states them, and its
data path (an HF dataset in the real one's schema saved to disk, or a MediaWiki dump) through 2
training steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rotary import checkpoint as ckpt
from rotary.train.config import load_recipe
from rotary.train.loop import train
from tests.dumps import page_xml, write_dump
from tests.train_support import LINES

datasets = pytest.importorskip("datasets")

ZH = ["北京是中国的首都，也是一座历史悠久的城市。", "今天天气很好，我们去公园散步吧。",
      "人民日报发表评论文章，讨论经济发展的新方向。", "他在图书馆里读了一下午的书。"]
# the real datasets' columns: wikimedia/wikipedia (id, url, title, text), openwebtext (text)
SCHEMAS = {"roformer-base": (("id", "url", "title", "text"), ZH), "openwebtext-gqa": (("text",), LINES)}
TOY = {"model.n_layer": 1, "model.n_head": 2, "model.d_model": 32, "model.d_ff": 64, "model.max_seq_len": 32,
       "seq_len": 32, "batch_size": 2, "data.tokenizer.vocab_size": 300, "max_steps": 2, "warmup_steps": 0,
       "eval_interval": 2, "eval_batches": 1, "checkpoint_interval": 2, "precision": "fp32", "compile": False,
       "tensorboard": False, "progress": False, "threads": 1}


def test_the_seed_recipes_keep_the_seeds_settings():
    rf = load_recipe("roformer-base")
    assert (rf.task, rf.model["preset"], rf.batch_size, rf.grad_accum_steps) == ("masked_lm", "roformer-base", 4, 16)
    assert (rf.eval_interval, rf.checkpoint_interval, rf.keep_checkpoints) == (1000, 1000, 10)
    assert rf.early_stopping_patience and rf.data.whole_word_mask and rf.data.tokenizer.jieba
    owt = load_recipe("openwebtext-gqa")
    assert (owt.task, owt.model["preset"], owt.seq_len) == ("causal_lm", "llama-small", 1024)
    assert owt.global_batch_tokens == 12 * 1024 * 40  # nanoGPT's GPT-2 step: accumulation from the world size
    assert (owt.lr, owt.min_lr, owt.warmup_steps, owt.weight_decay, owt.beta2) == (6e-4, 6e-5, 2000, 0.1, 0.95)
    wiki = load_recipe("wikipedia-bpe32k")
    shape = {k: wiki.model[k] for k in ("n_layer", "n_head", "d_model", "max_seq_len")}
    assert (wiki.task, wiki.seq_len, wiki.global_batch_tokens) == ("causal_lm", 1024, 12 * 1024 * 40)
    assert shape == {"n_layer": 12, "n_head": 12, "d_model": 768, "max_seq_len": 1024}  # GPT-2 small's
    assert (wiki.data.corpus, wiki.data.tokenizer.kind, wiki.data.tokenizer.vocab_size) == ("enwiki-sample", "bpe",
                                                                                             32000)


@pytest.mark.parametrize("recipe", sorted(SCHEMAS))
def test_a_seed_recipe_runs_its_data_path_and_two_steps_at_toy_width(recipe, tmp_path):
    columns, texts = SCHEMAS[recipe]
    rows = [" ".join(texts[i % len(texts)] for i in range(k, k + 6)) for k in range(60)]
    table = {c: ([f"{i}" for i in range(len(rows))] if c != "text" else rows) for c in columns}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table)}).save_to_disk(str(tmp_path / "saved"))
    toy = dict(TOY)
    if recipe == "openwebtext-gqa":
        toy.update({"model.n_kv_head": 1, "global_batch_tokens": 2 * 32 * 2})  # GQA kept; accumulation 2
    cfg = load_recipe(recipe, {**toy, "data.corpus": f"hf:{tmp_path / 'saved'}", "data.corpus_options": {},
                               "output_dir": str(tmp_path / "run")})
    result = train(cfg)
    assert result.step == 2 and math.isfinite(result.last_eval["loss"])
    assert ckpt.latest_checkpoint(Path(cfg.run_dir)) is not None


def test_the_wikipedia_recipe_runs_a_dump_and_two_steps_at_toy_width(tmp_path):
    body = [" ".join(LINES[(k + i) % len(LINES)] for i in range(6)) for k in range(60)]
    pages = [page_xml(f"Article {k}", f"'''Article {k}''' is [[Sonnet|a sonnet]]. {text}{{{{stub}}}}", page_id=k)
             for k, text in enumerate(body)]
    pages.append(page_xml("Talk:Article 0", "Not an article.", ns=1, page_id=99))
    dump = write_dump(tmp_path / "enwiki-20240101-pages-articles.xml.bz2", pages)
    cfg = load_recipe("wikipedia-bpe32k", {**TOY, "data.corpus": f"wikidump:{dump}", "global_batch_tokens": 2 * 32,
                                           "output_dir": str(tmp_path / "run")})
    result = train(cfg)
    assert result.step == 2 and math.isfinite(result.last_eval["loss"])
    assert ckpt.latest_checkpoint(Path(cfg.run_dir)) is not None
    meta = json.loads((Path(cfg.run_dir) / "data" / "meta.json").read_text())
    assert meta["source"] == f"wikidump:{dump}" and meta["documents_train"] + meta["documents_val"] == 60  # no talk
