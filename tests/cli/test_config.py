"""ModelConfig: YAML round trips, strict keys with suggestions, validation, presets, overrides."""

import dataclasses
from dataclasses import dataclass, field

import pytest
import yaml

from rotary.config import apply_overrides, from_dict, load_yaml, parse_overrides
from rotary.errors import RotaryError
from rotary.model.config import ModelConfig
from rotary.model.presets import PRESETS, get_preset


def test_yaml_round_trip(tmp_path):
    cfg = ModelConfig(
        vocab_size=1234, n_layer=3, n_head=6, n_kv_head=2, d_model=96, d_ff=None, mlp="gelu",
        norm="layernorm", pre_norm=False, bias=True, causal=False, position="rope",
        rope_theta=50000.0, rope_scaling="yarn", rope_scaling_factor=4.0,
        rope_original_max_seq_len=512, rotary_fraction=0.5, type_vocab_size=2, pad_token_id=0,
        hidden_act="gelu_tanh",
    )
    path = tmp_path / "model.yaml"
    cfg.to_yaml(path)
    assert path.is_file()
    back = ModelConfig.from_yaml(path)
    assert back == cfg
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    # the file is plain YAML with every field
    data = yaml.safe_load(path.read_text())
    assert set(data) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert data["rope_scaling"] == "yarn" and data["n_kv_head"] == 2 and data["d_ff"] is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(name, tmp_path):
    cfg = get_preset(name)
    cfg.to_yaml(tmp_path / "p.yaml")
    assert ModelConfig.from_yaml(tmp_path / "p.yaml") == cfg


def test_get_preset_returns_a_copy():
    a = get_preset("tiny")
    a.n_layer = 99
    assert get_preset("tiny").n_layer == PRESETS["tiny"].n_layer != 99


@pytest.mark.parametrize(
    "bad,good", [("n_layers", "n_layer"), ("dmodel", "d_model"), ("rope_base", "rope_theta"),
                 ("num_kv_heads", "n_kv_head"), ("vocab", "vocab_size")]
)
def test_unknown_key_names_the_closest_valid_key(bad, good):
    with pytest.raises(RotaryError) as err:
        ModelConfig.from_dict({bad: 2})
    msg = str(err.value)
    assert f"unknown key '{bad}'" in msg
    assert f"did you mean '{good}'" in msg
    assert "\n" not in msg


def test_unknown_key_far_from_everything_lists_valid_keys():
    with pytest.raises(RotaryError, match="valid keys: .*n_layer"):
        ModelConfig.from_dict({"zzzzzzzz": 1})


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("n_layers: 4\nd_model: 64\n")
    with pytest.raises(RotaryError, match="did you mean 'n_layer'"):
        ModelConfig.from_yaml(path)


def test_yaml_file_errors_are_one_line(tmp_path):
    with pytest.raises(RotaryError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(RotaryError, match="invalid YAML") as err:
        load_yaml(bad)
    assert "\n" not in str(err.value)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(RotaryError, match="mapping"):
        load_yaml(top)


# ---------------------------------------------------------------------------------------------
# Impossible combinations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(d_model=100, n_head=8), "divisible by n_head"),
        (dict(n_head=8, n_kv_head=3), "multiple of n_kv_head"),
        (dict(n_head=8, n_kv_head=0), "n_kv_head"),
        (dict(d_model=64, n_head=4, rotary_fraction=0.5625), "even"),  # 16 * 0.5625 = 9
        (dict(d_model=64, n_head=4, rotary_fraction=0.3), "rotary"),  # 4.8 dims
        (dict(d_model=40, n_head=8), "even"),  # head_dim 5: RoPE cannot pair it
        (dict(rotary_fraction=0.0), "rotary_fraction"),
        (dict(rotary_fraction=1.5), "rotary_fraction"),
        (dict(position="learned", rope_scaling="linear", rope_scaling_factor=2.0), "needs position=rope"),
        (dict(position="none", rope_scaling="yarn", rope_scaling_factor=2.0), "needs position=rope"),
        (dict(rope_scaling="linear", rope_scaling_factor=0.5), "rope_scaling_factor"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(position="sinusoidal", d_model=63, n_head=7), "even d_model"),
        (dict(n_layer=0), "n_layer must be positive"),
        (dict(dropout=1.0), "dropout"),
        (dict(pad_token_id=500, vocab_size=100), "pad_token_id"),
        (dict(d_ff=0), "d_ff"),
        (dict(mlp="geglu"), "not one of"),
        (dict(n_layer="two"), "expected an integer"),
    ],
)
def test_impossible_combinations_are_clear_errors(kwargs, needle):
    with pytest.raises(RotaryError, match=needle) as err:
        ModelConfig.from_dict(kwargs)
    assert str(err.value).startswith("model") or str(err.value).startswith("ModelConfig")
    assert "\n" not in str(err.value)


def test_odd_rotary_dims_error_names_the_numbers():
    with pytest.raises(RotaryError) as err:
        ModelConfig(d_model=64, n_head=4, rotary_fraction=0.5625)
    msg = str(err.value)
    assert "head_dim (16)" in msg and "0.5625" in msg and "9" in msg


def test_valid_edge_cases_are_accepted():
    ModelConfig(d_model=64, n_head=4, rotary_fraction=0.25)  # 4 rotary dims
    ModelConfig(n_head=8, n_kv_head=1)  # MQA
    ModelConfig(n_head=8, n_kv_head=8)  # MHA spelled out
    ModelConfig(position="learned", rope_scaling="none")
    ModelConfig(d_model=40, n_head=8, position="learned")  # odd head_dim is fine without RoPE
    ModelConfig(rope_scaling="dynamic_ntk", rope_scaling_factor=1.0)


def test_derived_values():
    cfg = ModelConfig(d_model=512, n_head=8, n_kv_head=None, mlp="swiglu", d_ff=None)
    assert cfg.kv_heads == 8 and cfg.head_dim == 64 and cfg.rotary_dim == 64
    assert cfg.ff_dim == 1408  # 8/3 * 512 = 1365.3, rounded up to a multiple of 64
    assert ModelConfig(d_model=512, mlp="gelu").ff_dim == 2048
    assert ModelConfig(max_seq_len=100).original_max_seq_len == 100
    assert ModelConfig(max_seq_len=100, rope_original_max_seq_len=50).original_max_seq_len == 50
    assert ModelConfig(d_model=512, n_head=8, rotary_fraction=0.25).rotary_dim == 16


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def test_roformer_base_preset():
    cfg = get_preset("roformer-base")
    assert (cfg.n_layer, cfg.n_head, cfg.d_model) == (12, 12, 768)
    assert cfg.position == "rope" and not cfg.causal and not cfg.pre_norm
    assert cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.type_vocab_size == 2


def test_llama_small_preset():
    cfg = get_preset("llama-small")
    assert cfg.kv_heads < cfg.n_head  # GQA
    assert cfg.mlp == "swiglu" and cfg.norm == "rmsnorm" and cfg.causal and cfg.pre_norm
    assert 90e6 <= cfg.estimate_num_parameters() <= 130e6


def test_tiny_preset_is_tiny():
    cfg = get_preset("tiny")
    assert cfg.estimate_num_parameters() < 1e6


def test_unknown_preset_suggests():
    with pytest.raises(RotaryError, match="did you mean 'llama-small'"):
        get_preset("llama-smal")
    with pytest.raises(RotaryError, match="did you mean 'roformer-base'"):
        ModelConfig.from_dict({"preset": "roformer_base"})


def test_preset_key_with_overrides(tmp_path):
    cfg = ModelConfig.from_dict({"preset": "roformer-base", "n_layer": 2, "vocab_size": 1000})
    base = get_preset("roformer-base")
    assert cfg.n_layer == 2 and cfg.vocab_size == 1000
    assert cfg == base.replace(n_layer=2, vocab_size=1000)
    path = tmp_path / "m.yaml"
    path.write_text("preset: llama-small\nn_kv_head: 1\nrope_scaling: linear\nrope_scaling_factor: 2\n")
    cfg = ModelConfig.from_yaml(path)
    assert cfg.n_kv_head == 1 and cfg.rope_scaling == "linear" and cfg.rope_scaling_factor == 2.0
    assert isinstance(cfg.rope_scaling_factor, float)
    assert cfg.d_model == 768
    # overrides are validated too
    with pytest.raises(RotaryError, match="multiple of n_kv_head"):
        ModelConfig.from_dict({"preset": "llama-small", "n_kv_head": 5})
    with pytest.raises(RotaryError, match="did you mean 'n_layer'"):
        ModelConfig.from_dict({"preset": "tiny", "n_layers": 5})


# ---------------------------------------------------------------------------------------------
# --key value overrides
# ---------------------------------------------------------------------------------------------


def test_parse_overrides_forms():
    got = parse_overrides(
        ["--max-steps", "10", "--model.n_layer=2", "--compile", "--lr", "1e-3", "--name", "run-1",
         "--model.n_kv_head", "null", "--flag", "false", "--eps", "0.5"]
    )
    assert got["max_steps"] == 10
    assert got["model.n_layer"] == 2
    assert got["compile"] is True  # a bare flag
    assert got["name"] == "run-1"
    assert got["model.n_kv_head"] is None
    assert got["flag"] is False
    assert got["eps"] == 0.5
    assert float(got["lr"]) == 1e-3  # YAML 1.1 keeps "1e-3" a string; the schema coerces it


def test_parse_overrides_rejects_stray_values():
    with pytest.raises(RotaryError, match="--key value"):
        parse_overrides(["n_layer", "2"])
    with pytest.raises(RotaryError):
        parse_overrides(["--a", "1", "stray"])


def test_apply_overrides_merges_dotted_keys_without_mutating():
    data = {"model": {"n_layer": 6, "d_model": 64}, "lr": 0.1}
    merged = apply_overrides(data, {"model.n_layer": 2, "lr": 0.5, "data.path": "x"})
    assert merged == {"model": {"n_layer": 2, "d_model": 64}, "lr": 0.5, "data": {"path": "x"}}
    assert data == {"model": {"n_layer": 6, "d_model": 64}, "lr": 0.1}


def test_overrides_are_coerced_by_the_schema():
    base = get_preset("tiny").to_dict()
    over = parse_overrides(
        ["--n-layer", "3", "--rope-theta", "1e4", "--dropout", "1e-1", "--bias", "true",
         "--n-kv-head", "null", "--rope-scaling", "yarn", "--rope-scaling-factor", "2",
         "--rope-original-max-seq-len", "None", "--pad-token-id", "0"]
    )
    cfg = ModelConfig.from_dict(apply_overrides(base, over))
    assert cfg.n_layer == 3
    assert cfg.rope_theta == 10000.0 and isinstance(cfg.rope_theta, float)
    assert cfg.dropout == 0.1 and isinstance(cfg.dropout, float)
    assert cfg.bias is True
    assert cfg.n_kv_head is None
    assert cfg.rope_scaling == "yarn"
    assert cfg.rope_scaling_factor == 2.0 and isinstance(cfg.rope_scaling_factor, float)
    assert cfg.rope_original_max_seq_len is None
    assert cfg.pad_token_id == 0


@dataclass
class _Sub:
    width: int = 1


@dataclass
class _Schema:
    lr: float = 0.1
    steps: int = 10
    flag: bool = False
    name: str = "x"
    maybe: int | None = None
    tags: list[str] = field(default_factory=list)
    sizes: tuple[int, ...] = ()
    sub: _Sub = field(default_factory=_Sub)


def test_from_dict_coerces_strings_from_the_command_line():
    got = from_dict(
        _Schema,
        {"lr": "1e-3", "steps": "1e4", "flag": "true", "name": 12, "maybe": "null",
         "tags": "a,b", "sizes": "1,2,3", "sub": {"width": "7"}},
    )
    assert got.lr == 1e-3 and isinstance(got.lr, float)
    assert got.steps == 10000 and isinstance(got.steps, int)
    assert got.flag is True
    assert got.name == "12"
    assert got.maybe is None
    assert got.tags == ["a", "b"]
    assert got.sizes == (1, 2, 3)
    assert got.sub == _Sub(width=7)
    for text, want in (("yes", True), ("off", False), ("0", False), ("1", True)):
        assert from_dict(_Schema, {"flag": text}).flag is want
    assert from_dict(_Schema, {"maybe": "5"}).maybe == 5


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"lr": "fast"}, "_Schema.lr: expected a number"),
        ({"lr": True}, "expected a number"),
        ({"steps": "1.5"}, "_Schema.steps: expected an integer"),
        ({"steps": 2.5}, "expected an integer"),
        ({"steps": True}, "expected an integer"),
        ({"flag": "maybe"}, "_Schema.flag: expected true or false"),
        ({"flag": 2}, "expected true or false"),
        ({"maybe": "lots"}, "_Schema.maybe: expected an integer"),
        ({"name": ["a"]}, "expected a string"),
        ({"sub": 3}, "expected a mapping"),
        ({"sub": {"widht": 2}}, "did you mean 'width'"),
        ({"sizes": "1,x"}, "expected an integer"),
        ({"lr": None}, "expected a number"),
    ],
)
def test_from_dict_bad_types_are_errors(data, needle):
    with pytest.raises(RotaryError, match=needle) as err:
        from_dict(_Schema, data)
    assert "\n" not in str(err.value)


def test_literal_fields_suggest_the_closest_choice():
    with pytest.raises(RotaryError, match="did you mean 'rmsnorm'"):
        ModelConfig.from_dict({"norm": "rms_norm"})
    with pytest.raises(RotaryError, match="did you mean 'dynamic_ntk'"):
        ModelConfig.from_dict({"rope_scaling": "dynamic"})


def test_recipe_keys_cover_every_field_dotted():
    from rotary.model.config import ModelConfig
    from rotary.train.config import DataConfig, TokenizerSpec, TrainConfig
    from rotary.train.recipe_keys import recipe_keys

    keys = {k: (t, d, h) for k, t, d, h in recipe_keys()}
    expected = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "data"}
    expected |= {f"data.{f.name}" for f in dataclasses.fields(DataConfig)} - {"data.tokenizer"}
    expected |= {f"data.tokenizer.{f.name}" for f in dataclasses.fields(TokenizerSpec)}
    expected |= {f"model.{f.name}" for f in dataclasses.fields(ModelConfig)} | {"model.preset"}
    assert set(keys) == expected
    assert all(h for _, _, h in keys.values())  # every key is documented
    assert keys["warmup_steps"][:2] == ("int|null", None) and keys["precision"][1] == "fp32"


def test_builtin_recipes_resolve_by_name_and_by_their_repository_path(tmp_path, monkeypatch):
    from rotary.train.config import BUILTIN_RECIPES, load_recipe, resolve_recipe

    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("shakespeare") == BUILTIN_RECIPES / "shakespeare.yaml"
    assert resolve_recipe("recipes/demo.yaml") == BUILTIN_RECIPES / "demo.yaml"
    assert load_recipe("shakespeare").name == "shakespeare"
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "demo.yaml").write_text("name: mine\n")
    assert load_recipe("recipes/demo.yaml").name == "mine"  # a file that exists comes first
    for bad in ("nosuch", "elsewhere/shakespeare.yaml"):
        names = ("chat-base, chat-sft, chinese-mix-mlm, chinese-sentiment, demo, openwebtext-gqa, "
                 "peoples-daily-electra, "
                 "peoples-daily-mlm, roformer-base, "
                 "shakespeare, tatoeba-zh-en, "
                 "tatoeba-zh-en-sinusoidal, thucnews, wikipedia-bpe32k")
        with pytest.raises(RotaryError, match=rf"recipe not found: .*\(built-in recipes: {names}"):
            resolve_recipe(bad)


def test_warmup_longer_than_training_is_warned_about():
    from rotary.train.config import TrainConfig

    assert TrainConfig(max_steps=100).warnings() == []
    (warning,) = TrainConfig(max_steps=10, warmup_steps=20).warnings()
    assert "warmup (20 steps) is not shorter than max_steps (10)" in warning
    assert TrainConfig(max_steps=10, warmup_fraction=0.5).warnings() == []
