"""One training settings dataclass: fit's defaults, the CLI options and the widget fields
are made from it, and its checks refuse settings that cannot train."""

import inspect

import pytest

from napari_nrf.settings import (FINETUNE_FIT, NRF_FIT, TRANSFER_FIT, UNIVERSAL_FIT, FitSettings, SettingsError,
                                 field_spec)


def test_fit_reads_its_defaults_from_the_settings():
    from napari_nrf.train import fit

    params = inspect.signature(fit).parameters
    for name, value in NRF_FIT.to_kwargs().items():
        assert params[name].default == value, name


@pytest.mark.parametrize("command, preset", [("train", NRF_FIT), ("train-universal", UNIVERSAL_FIT),
                                             ("transfer", TRANSFER_FIT), ("finetune", FINETUNE_FIT)])
def test_cli_options_are_made_from_the_settings(command, preset):
    from napari_nrf.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    defaults = {a.dest: a.default for a in sub._actions}
    for name, value in preset.to_kwargs().items():
        if name != "val_every":
            assert defaults[name] == value, (command, name)


def test_checks_and_presets():
    assert UNIVERSAL_FIT.lr == 3e-4 and UNIVERSAL_FIT.weight_decay == 0 and UNIVERSAL_FIT.batch_voxels == 5000
    # train-universal and transfer: NRF's step schedule (default_steps, derived validations, patience 8)
    for preset in (UNIVERSAL_FIT, TRANSFER_FIT):
        assert preset.epochs is None and preset.steps is None and preset.val_every is None
        assert preset.patience == NRF_FIT.patience
    # measured against a schedule grid (benchmarks/recipe_defaults.py): 400 steps at lr 1e-3
    assert FINETUNE_FIT.epochs == 20 and FINETUNE_FIT.steps_per_epoch == 20 and FINETUNE_FIT.patience == 3
    assert FINETUNE_FIT.lr == 1e-3
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"alpha": 1.5}, {"weight_decay": -1.0}, {"lr": float("nan")}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            FitSettings().replace(**bad).check()
    FitSettings(steps_per_epoch=None).check()
    spec = field_spec("epochs", FINETUNE_FIT)
    assert spec["default"] == 20 and spec["min"] == 1 and "epochs" in spec["help"]


def test_train_universal_no_flag_model_takes_the_embedding_defaults():
    """The CLI's no-flag model settings, the model's own defaults and the settings' constants agree."""
    import inspect

    from napari_nrf.cli import build_parser
    from napari_nrf.cli.universal import model_config
    from napari_nrf.models.universal import UniversalEncoder
    from napari_nrf.settings import EMBED_INIT_STD, EMBEDDING_LR_SCALE

    cfg = model_config(build_parser().parse_args(["train-universal", "a.h5", "--out", "m.safetensors"]))
    assert cfg["embed_init_std"] == EMBED_INIT_STD == 0.01 and cfg["embedding_lr_scale"] == EMBEDDING_LR_SCALE == 10
    params = inspect.signature(UniversalEncoder).parameters
    assert params["embed_init_std"].default == EMBED_INIT_STD
    assert params["embedding_lr_scale"].default == EMBEDDING_LR_SCALE
