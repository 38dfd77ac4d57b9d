"""The generic verbs: ``train / evaluate / query --kind K`` reach every kind through its
spec (napari_nrf.kinds); a kind's own verbs stay as aliases with the same flags."""

import numpy as np
import pytest

from napari_nrf.cli import _kinds, main
from napari_nrf.kinds import KindSpec, specs, spec_for, trainable_kinds


def test_every_kind_has_a_spec_and_the_toy_package_is_one_of_them():
    s = specs()
    assert {"nrf", "universal", "rest2visual", "movie", "ensemble", "toy-linear"} <= set(s)
    assert all(isinstance(v, KindSpec) and v.kind == k for k, v in s.items())
    assert {"nrf", "universal", "rest2visual", "movie", "toy-linear"} <= set(trainable_kinds())
    assert "ensemble" not in trainable_kinds()
    for k, v in s.items():  # each spec names its model class, whose kind is the spec's
        assert v.model_class().kind == k


@pytest.mark.parametrize("argv,expected", [
    (["train", "--kind", "universal", "a.h5", "--out", "m.safetensors"], ["train-universal", "a.h5", "--out",
                                                                          "m.safetensors"]),
    (["train", "--kind=rest2visual", "a.h5"], ["train-rest2visual", "a.h5"]),
    (["train", "--kind", "movie", "film.h5"], ["train-movie", "film.h5"]),
    (["train", "--kind", "nrf", "a.h5"], ["train", "a.h5"]),
    (["train", "a.h5"], ["train", "a.h5"]),
    (["evaluate", "--kind", "movie", "m.safetensors", "film.h5"], ["evaluate-movie", "m.safetensors", "film.h5"]),
    (["train", "--kind", "ensemble", "--help"], ["finetune", "--help"]),
    (["simulate", "--kind", "x"], ["simulate", "--kind", "x"]),
])
def test_routes(argv, expected):
    assert _kinds.route(argv) == (expected, None)


def test_a_kind_without_a_train_verb_gets_the_generic_training():
    routed, (spec, rest) = _kinds.route(["train", "--kind", "toy-linear", "a.h5", "--out", "m.safetensors"])
    assert routed is None and spec.kind == "toy-linear" and rest == ["a.h5", "--out", "m.safetensors"]
    args = _kinds.train_parser(spec).parse_args(rest)
    assert args.lr == spec.fit.lr and args.out == "m.safetensors" and args.func is _kinds.run_train


def test_evaluate_takes_the_kind_from_the_bundle(tmp_path):
    from napari_nrf.testing import build_example, example_data

    rs, _ = example_data()
    for kind, verb in (("rest2visual", "evaluate-rest2visual"), ("nrf", "evaluate"), ("toy-linear", "evaluate")):
        path = build_example(kind, rs).save(tmp_path / f"{kind}.safetensors")
        assert _kinds.route(["evaluate", str(path), "data.h5"]) == ([verb, str(path), "data.h5"], None)


def test_query_kind_must_match_the_bundle(tmp_path, capsys):
    from napari_nrf.testing import build_example, example_data

    rs, _ = example_data()
    path = build_example("nrf", rs).save(tmp_path / "m.safetensors")
    assert main(["query", str(path), "x.png", "--kind", "universal", "--out", str(tmp_path / "q")]) == 2
    assert "'nrf' model" in capsys.readouterr().err


def test_an_unknown_kind_is_one_line(capsys):
    assert main(["train", "--kind", "nope", "a.h5", "--out", "m.safetensors"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown model kind 'nope'" in err and "\n" not in err


def test_the_old_verbs_keep_their_flags():
    from napari_nrf.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for verb in ("train-universal", "train-rest2visual", "train-movie", "evaluate-rest2visual", "evaluate-movie",
                 "query-movie", "transfer", "finetune"):
        assert verb in sub.choices
    assert "--kind" in sub.choices["train"]._option_string_actions
