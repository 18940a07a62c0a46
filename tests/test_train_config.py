"""Training configs: every shipped recipe validates; typos and wrong types are named; overrides apply."""

import pytest

from affectclip.train.config import ConfigError, list_recipes, load_config


def test_shipped_recipes_load_and_describe_themselves():
    recipes = list_recipes()
    assert {"demo", "emotionclip", "emoclip", "emocapclip"} <= set(recipes)
    for name in recipes:
        cfg = load_config(name)
        assert recipes[name], f"recipe {name} has no description"
        assert cfg.run.epochs >= 1


def test_published_defaults_are_in_the_recipes():
    ec = load_config("emotionclip")
    assert ec.optim.betas == (0.98, 0.9) and ec.optim.lr_weights == 1e-8 and ec.optim.lr_gain_bias == 5e-5
    assert ec.loss.name == "sentiment" and ec.loss.sentiment["lam"] == 10.0 and ec.data.video_frames == 8
    assert ec.model.overrides["vision_cfg"]["subject_token"] is True
    assert ec.model.overrides["preprocess"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet stats, as released
    eo = load_config("emoclip")
    assert eo.optim.name == "sgd" and eo.optim.milestones == [15, 35, 50] and eo.data.video_frames == 32
    assert eo.model.freeze_image and eo.model.freeze_text and eo.loss.gather is False
    assert eo.model.overrides["temporal_cfg"]["faithful_quirk"] is True
    cap = load_config("emocapclip")
    assert cap.loss.name == "global_local" and cap.loss.mining["guide"] == "cross"


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        "demo",
        [
            "run.epochs=3",
            "optim.lr=0.01",
            "data.synthetic={n_train: 64, n_val: 32}",
            "model.overrides.vision_cfg.subject_token=true",
        ],
    )
    assert cfg.run.epochs == 3 and cfg.optim.lr == 0.01 and cfg.data.synthetic["n_train"] == 64
    assert cfg.model.overrides["vision_cfg"]["subject_token"] is True


@pytest.mark.parametrize(
    "override, message",
    [
        (["run.epoch=3"], r"unknown key\(s\) epoch in 'run'; allowed: epochs"),
        (["run.epochs=three"], r"'run.epochs' must be int"),
        (["optim.betas=[0.9]"], r"'optim.betas' must have 2 items"),
        (["foo.bar=1"], r"unknown key\(s\) foo at the top level"),
        (["run.epochs"], r"must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", override)


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: .*demo"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(missing))


def test_a_recipe_inherits_its_base_and_overrides_only_what_it_names():
    """Stage 2 of the shipped model (`base: ferplus`) must train on exactly stage 1's data, loss and evaluation."""
    one, two = load_config("ferplus"), load_config("ferplus_text")
    assert two.data == one.data and two.loss == one.loss and two.eval == one.eval
    assert two.model.overrides["vision_cfg"] == {"image_size": 80, "freeze_backbone": True}  # merged, not replaced
    assert two.model.overrides["text_cfg"] == {"context_length": 32, "trainable": True, "trainable_layers": 3}
    assert one.optim.fused is two.optim.fused is False  # the shipped weights were trained with per-tensor AdamW
    assert (two.run.epochs, two.optim.warmup_steps, two.optim.lr_text) == (3, 30, 1e-4)
    assert (two.optim.lr, two.run.best_metric) == (one.optim.lr, one.run.best_metric)
    assert two.description != one.description


def test_base_paths_resolve_next_to_the_recipe_and_errors_name_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("base: demo\nrun: {epochs: 7}\ndata: {classes: [calm, tense]}\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nrun: {seed: 3}\n")
    cfg = load_config(str(tmp_path / "sub" / "b.yaml"), ["run.epochs=9"])
    assert (cfg.run.epochs, cfg.run.seed, cfg.data.classes) == (9, 3, ["calm", "tense"])  # lists replace
    assert cfg.model.name == load_config("demo").model.name

    (tmp_path / "loop1.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop1.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself.*loop1.yaml -> loop2.yaml -> loop1.yaml"):
        load_config(str(tmp_path / "loop1.yaml"))
    (tmp_path / "bad.yaml").write_text("base: no_such_recipe\n")
    with pytest.raises(ConfigError, match="bad.yaml: base: unknown recipe 'no_such_recipe'"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "typed.yaml").write_text("base: [demo]\n")
    with pytest.raises(ConfigError, match="'base' must be a recipe name"):
        load_config(str(tmp_path / "typed.yaml"))


def test_a_tuned_text_body_gets_its_own_learning_rate():
    """`optim.lr_text` (recipe ferplus_text: 1e-4 for MiniLM's unlocked top layers) is kept apart from the projections'
    rate; the locked layers are not handed to the optimiser at all."""
    import torch.nn as nn

    from affectclip.models.factory import create_model
    from affectclip.train.loop import param_groups

    cfg = load_config("ferplus_text")
    model = create_model(cfg.model.name, **cfg.model.overrides)
    groups = {g["name"]: g for g in param_groups(model, nn.Module(), cfg)}
    text = [p for n in ("text_weights", "text_gain_bias") for p in groups[n]["params"]]
    n_layers, n_tuned = len(model.text.bert.encoder.layer), cfg.model.overrides["text_cfg"]["trainable_layers"]
    top = tuple(f"text.bert.encoder.layer.{i}." for i in range(n_layers - n_tuned, n_layers))
    unlocked = [p for n, p in model.named_parameters() if n.startswith(top)]
    assert n_tuned < n_layers and {id(p) for p in text} == {id(p) for p in unlocked}
    assert groups["text_weights"]["lr"] == groups["text_gain_bias"]["lr"] == 1e-4
    assert groups["weights"]["lr"] == 5e-4
    assert id(model.text.proj.weight) in {id(p) for p in groups["weights"]["params"]}
    assert not any(n.startswith("visual.backbone.") for n, p in model.named_parameters() if p.requires_grad)


def test_a_required_recipe_value_must_be_given_before_training(tmp_path):
    """ferplus_text continues a stage-1 run: without model.pretrained it would silently train on a frozen ImageNet
    backbone with fresh projections, so the run refuses to start, in one line that says what to pass."""
    from affectclip.cli import main
    from affectclip.train.config import require_set

    with pytest.raises(ConfigError, match=r"leaves model.pretrained for you to set \(marked \?\?\?\); pass "
                                          r"model.pretrained=VALUE"):
        require_set(load_config("ferplus_text"))
    require_set(load_config("ferplus_text", ["model.pretrained=runs/x/model.safetensors"]))
    (tmp_path / "r.yaml").write_text("base: demo\ndata: {classes: [a, \"???\"]}\n")
    with pytest.raises(ConfigError, match=r"data.classes\[1\]"):
        require_set(load_config(str(tmp_path / "r.yaml")))
    assert main(["train", "ferplus_text", "--output", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()  # refused before the output folder is made
