"""Recipe schema: every shipped recipe validates; unknown keys and wrong types name the key."""

from __future__ import annotations

import pytest

from vlm_cli.errors import RecipeError
from vlm_cli.recipe import builtin_recipes, load_recipe


@pytest.mark.parametrize("name", builtin_recipes())
def test_every_shipped_recipe_validates(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert load_recipe(name, []).to_dict() == recipe.to_dict()


def test_overrides_are_typed():
    r = load_recipe("tiny-av", ["data.frames=16", "model.vision.feature_layer=-1",
                                "data.sampling=fps", "data.fps=2.5", "data.max_frames=12"])
    assert (r.data.frames, r.model.vision.feature_layer) == (16, -1)
    assert r.data.frame_sampling() == {"strategy": "fps", "fps": 2.5, "max_frames": 12}
    assert isinstance(load_recipe("tiny-av", ["data.clip_seconds=3"]).data.clip_seconds, float)


@pytest.mark.parametrize("override, message", [
    ("data.framez=3", "unknown recipe key 'data.framez'; valid keys under 'data': frames,"),
    ("colour=red", "unknown recipe key 'colour'; valid keys: name, model, data"),
    ("data.frames=abc", "recipe key 'data.frames': expected int, got 'abc'"),
    ("data.frames=2.5", "recipe key 'data.frames': expected int"),
    ("data.frames=0", "'data.frames': must be at least 1"),
    ("model.vision.select=foo", "'model.vision.select': expected one of 'patch' | 'cls_patch'"),
    ("model.vision.pretrained=org/x", "'model.vision': set exactly one of 'pretrained'"),
    ("data.sampling=fps", "'data.fps': a positive number is required"),
    ("data=3", "recipe key 'data': expected a mapping"),
    ("data.frames", "expected KEY=VALUE"),
    ("data.frames.x=1", "'data.frames' is not a mapping"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-av", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_file_and_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndata:\n  frames: 4\n")
    assert load_recipe(str(path)).data.frames == 4
    path.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match="recipe .*missing.yaml"):
        load_recipe(str(tmp_path / "missing.yaml"))
    with pytest.raises(RecipeError, match="unknown recipe 'nope'; built-in recipes: .*tiny-av"):
        load_recipe("nope")


def test_float_overrides_in_exponent_notation():
    # PyYAML (YAML 1.1) reads 2e-4 as a string; a float key accepts it, and still rejects words.
    from vlm_cli.errors import RecipeError
    from vlm_cli.recipe import load_recipe

    assert load_recipe("tiny-av", ["train.stage1.lr=2e-4"]).train.stage1.lr == 2e-4
    assert load_recipe("tiny-av", ["train.stage1.lr=1E-3"]).train.stage1.lr == 1e-3
    with pytest.raises(RecipeError, match="expected float"):
        load_recipe("tiny-av", ["train.stage1.lr=fast"])
