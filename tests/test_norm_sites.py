"""Each model's one list of norm sites (``NORM_SITES``) against the README's table and the builds:
- the README's table of norm sites lists exactly the model classes that declare ``NORM_SITES``, with
  their sites in order;
- the smallest preset of each family builds only declared sites (``create_model`` checks it, and the
  check fails for an undeclared one);
- a misspelt ``norm.sites`` entry is still refused, naming the sites that the build uses.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

import models
from dyt.nn import build_norm_factory

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(\w+)` \(`models/(\w+)\.py`\) \| (.+) \|$")


def declared() -> dict[tuple[str, str], tuple[str, ...]]:
    """(class, module file stem) -> NORM_SITES for every class in a family module that declares it."""
    out = {}
    for family in models.FAMILIES:
        module = importlib.import_module(f"models.{family}")
        for name, obj in vars(module).items():
            if isinstance(obj, type) and obj.__module__ == module.__name__ and "NORM_SITES" in vars(obj):
                out[(name, family)] = tuple(obj.NORM_SITES)
    return out


def readme_table() -> dict[tuple[str, str], tuple[str, ...]]:
    rows = [ROW.match(line) for line in (ROOT / "README.md").read_text().splitlines()]
    return {(m[1], m[2]): tuple(re.findall(r"`(\w+)`", m[3])) for m in rows if m}


def test_readme_table_equals_the_models_lists():
    table = readme_table()
    assert len(table) >= 10 and table == declared()


def test_every_registered_class_declares_its_sites():
    with torch.device("meta"):
        classes = {type(models.create_model(p, norm="layernorm")) for p in models.model_names()}
    assert all(isinstance(getattr(c, "NORM_SITES", None), tuple) for c in classes), classes


def test_a_site_missing_from_the_list_is_an_error():
    norm = build_norm_factory("dyt")
    norm(8, site="attn")
    norm(8, site="mlp")
    with pytest.raises(ValueError, match=r"\['mlp'\].*NORM_SITES \(attn, ffn, final\) does not list"):
        norm.check_sites_used(("attn", "ffn", "final"))
    norm.check_sites_used(("attn", "ffn", "final", "mlp"))  # declared: no error


def test_a_misspelt_config_site_is_still_refused_with_the_sites_the_build_uses():
    with pytest.raises(ValueError, match=r"\['atn'\].*its sites are: attn, ffn, final"):
        models.create_model("vit_test", norm={"name": "dyt", "sites": {"atn": {"alpha_init": 0.8}}})
