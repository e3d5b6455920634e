"""Recipes: flat TOML files and `--set key=value` overrides, every value checked the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamsr.errors import ConfigError
from streamsr.training.recipe import Recipe, apply_overrides, load_recipe

REPO = Path(__file__).resolve().parent.parent
RECIPE = Recipe(name="t", model="tiny", batch=3, epochs=5, max_steps=16, lr=2e-3, lr_min=2e-4,
                patch=8, augment=True, num_workers=0, log_every=1, checkpoint_every=4, keep_last=3,
                val_max=6, seed=7)


def test_recipes_in_repo_and_overrides():
    paper = load_recipe(REPO / "train" / "paper_gopro.toml")
    assert (paper.model, paper.lr, paper.lr_min, paper.betas, paper.epochs, paper.batch) == \
        ("paper", 1e-4, 1e-5, (0.9, 0.999), 21, 13)
    assert (paper.alpha, paper.edge_weight) == (0.5, 0.05)
    lite = load_recipe(REPO / "train" / "lite_synthetic.toml")
    assert lite.model == "lite" and lite.max_steps > 0
    r = apply_overrides(paper, ["lr=2e-4", "batch=4", "model=lite", "betas=0.8,0.99", "augment=false"])
    assert (r.lr, r.batch, r.model, r.betas, r.augment) == (2e-4, 4, "lite", (0.8, 0.99), False)
    assert r.epochs == 21  # untouched
    for bad in ["nosuchkey=1", "batch=2.5", "augment=maybe", "lr=fast", "model=huge", "epochs",
                "lr_min=1"]:
        with pytest.raises(ConfigError):
            apply_overrides(paper, [bad])


def test_recipe_file_rejects_unknown_keys_and_bad_types(tmp_path):
    (tmp_path / "a.toml").write_text('model = "tiny"\nlearning_rate = 1e-3\n')
    with pytest.raises(ConfigError, match="learning_rate"):
        load_recipe(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text('model = "tiny"\nepochs = "ten"\n')
    with pytest.raises(ConfigError, match="epochs"):
        load_recipe(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text('model = "tiny"\nepochs = 3\n')
    assert load_recipe(tmp_path / "c.toml") == Recipe(name="c", model="tiny", epochs=3)


@pytest.mark.parametrize("text,key", [
    ("lr = nan", "lr"), ("lr = inf", "lr"), ("grad_clip = nan", "grad_clip"),
    ("alpha = -inf", "alpha"), ("edge_weight = nan", "edge_weight"),
    ("weight_decay = inf", "weight_decay"), ("shake_max_shift = nan", "shake_max_shift"),
    ("shake_max_noise = inf", "shake_max_noise"), ("betas = [nan, 0.9]", "betas"),
    ("seed = 4294967296", "seed"), ("seed = -1", "seed"), ("seed = 99999999999999999", "seed"),
    ("batch = 100000000", "batch"), ("samples_per_epoch = 9000000000", "samples_per_epoch"),
    ("epochs = 1000000000", "epochs"), ("lr = 5.0", "lr"), ("val_split = \"../../etc\"", "val_split"),
    ("name = \"a\\nb\"", "name"),
])
def test_recipe_values_must_be_finite_and_in_range(tmp_path, text, key):
    # each was accepted (or crashed later: numpy's seed range) and trained on
    (tmp_path / "r.toml").write_text(f'model = "tiny"\n{text}\n')
    with pytest.raises(ConfigError, match=key) as e:
        load_recipe(tmp_path / "r.toml")
    assert "\n" not in str(e.value) and str(tmp_path / "r.toml") in str(e.value)


def test_overrides_and_python_recipes_are_checked_the_same(tmp_path):
    for bad in ["lr=inf", "lr=nan", "grad_clip=inf", "seed=-3", "seed=4294967296", "keep_last=0"]:
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            apply_overrides(RECIPE, [bad])
    with pytest.raises(ConfigError, match="batch"):
        Recipe(batch="8")  # wrong type from Python, not only from TOML
    with pytest.raises(ConfigError, match="lr"):
        Recipe(lr=float("inf"))
    assert apply_overrides(RECIPE, ["seed=4294967295"]).seed == 2**32 - 1  # numpy's largest


@pytest.mark.timeout(30)
def test_recipe_path_that_is_a_fifo_is_refused_not_read(tmp_path):
    fifo = tmp_path / "recipe.toml"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    with pytest.raises(ConfigError, match="not a regular file"):
        load_recipe(fifo)
    r = subprocess.run([sys.executable, "-m", "streamsr", "train", "--recipe", str(fifo), "--data",
                        str(tmp_path), "--out", str(tmp_path / "run")], capture_output=True,
                       text=True, timeout=25, cwd=tmp_path)
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr


def test_recipe_checks_video_degradation_fields():
    from streamsr.errors import ConfigError
    from streamsr.training.recipe import Recipe
    with pytest.raises(ConfigError, match="shake_codec"):
        Recipe(shake_codec=1.5)
    with pytest.raises(ConfigError, match="shake_crf"):
        Recipe(shake_crf=(30, 10))
