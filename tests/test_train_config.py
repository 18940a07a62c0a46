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


def test_a_tuned_text_body_gets_its_own_learning_rate():
    """`optim.lr_text` (recipe ferplus_text: 1e-4 for MiniLM's unlocked last layer) is kept apart from the projections'
    rate; the locked layers are not handed to the optimiser at all."""
    import torch.nn as nn

    from affectclip.models.factory import create_model
    from affectclip.train.loop import param_groups

    cfg = load_config("ferplus_text")
    model = create_model(cfg.model.name, **cfg.model.overrides)
    groups = {g["name"]: g for g in param_groups(model, nn.Module(), cfg)}
    text = [p for n in ("text_weights", "text_gain_bias") for p in groups[n]["params"]]
    unlocked = [p for n, p in model.named_parameters() if n.startswith("text.bert.encoder.layer.5.")]
    assert {id(p) for p in text} == {id(p) for p in unlocked}
    assert groups["text_weights"]["lr"] == groups["text_gain_bias"]["lr"] == 1e-4
    assert groups["weights"]["lr"] == 5e-4
    assert id(model.text.proj.weight) in {id(p) for p in groups["weights"]["params"]}
    assert not any(n.startswith("visual.backbone.") for n, p in model.named_parameters() if p.requires_grad)
