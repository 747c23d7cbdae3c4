"""Registry behaviour and option validation."""

from __future__ import annotations

import pytest

import methods
from methods.base import Method
from methods.registry import METHODS, Registry, register


def test_every_method_is_listed_with_documented_options():
    assert {"full_sft", "lora", "static_isolation", "epi", "random_isolation"} <= set(methods.names())
    for name in methods.names():
        for option, _, _, help_text in methods.describe(name):
            assert help_text, f"{name}.{option} has no help text"


def test_duplicate_and_bad_names_are_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register("epi")(type("X", (Method,), {}))
    with pytest.raises(ValueError, match="must match"):
        register("Bad-Name")
    assert "Bad-Name" not in METHODS


def test_one_registry_idiom_for_methods_tasks_and_backbones():
    from bench.backbones.registry import BACKBONES
    from bench.suite.tasks import TASKS

    for registry in (METHODS, TASKS, BACKBONES):
        assert isinstance(registry, Registry) and len(registry) > 0
    with pytest.raises(KeyError, match="Did you mean 'arithmetic'"):
        TASKS.get("arithmetik")
    with pytest.raises(KeyError, match="unknown backbone"):
        BACKBONES.get("tiny-lama")
    with pytest.raises(ValueError, match="already registered"):
        TASKS.add("logic", TASKS["logic"])
    assert BACKBONES["meta-llama/Meta-Llama-3-8B"].shape["hidden_size"] == 4096


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="Did you mean 'epi'"):
        methods.get("epii")


def test_unknown_option_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) rh0.*allowed: .*rho"):
        methods.build("epi", {"rh0": 0.1})


@pytest.mark.parametrize("name,options,field", [
    ("epi", {"rho": 1.5}, "rho"), ("epi", {"importance": "fisher"}, "importance"),
    ("epi", {"beta": 1.0}, "beta"), ("lora", {"r": 0}, "r"),
    ("static_isolation", {"source": "oracle"}, "source"), ("random_isolation", {"refresh_every": 0}, "refresh_every"),
])
def test_bad_values_name_the_field_and_value(name, options, field):
    with pytest.raises(ValueError, match=rf"bad value .* for option '{field}'; allowed"):
        methods.build(name, options)


def test_configs_are_frozen():
    m = methods.build("epi")
    with pytest.raises(AttributeError):
        m.config.rho = 0.5
