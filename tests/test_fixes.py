import pytest
import torch

from ablate.engine.fixes import NO_BRANCH, fix_class, fix_names, parse_fix
from ablate.errors import AblateInputError

SEVEN = ["none", "fixed-scale", "learnable-alpha", "zero-init", "tanh-gate", "layerscale", "norm-match"]


def test_registry_holds_the_seven_fixes_and_the_reference():
    assert fix_names(include_reference=False) == SEVEN
    assert fix_names()[-1] == NO_BRANCH


@pytest.mark.parametrize(
    "name, expected",
    [
        ("none", lambda x, c, s: x + c),
        ("fixed-scale", lambda x, c, s: x + s * c),
        ("learnable-alpha", lambda x, c, s: x + s * c),
        ("zero-init", lambda x, c, s: x + c),
        ("tanh-gate", lambda x, c, s: x + torch.tanh(torch.tensor(s)) * c),
        ("layerscale", lambda x, c, s: x + s * c),
        (
            "norm-match",
            lambda x, c, s: x + s * c * x.norm(dim=-1, keepdim=True) / (c.norm(dim=-1, keepdim=True) + 1e-6),
        ),
    ],
)
def test_join_formula(name, expected):
    cls = fix_class(name)
    s = 0.3 if cls.takes_scale else None
    join = parse_fix(name, s).build_join(8)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    torch.testing.assert_close(join(x, c), expected(x, c, s if s is not None else 1.0))


def test_defaults_and_canonical_names():
    assert parse_fix("tanh-gate").scale == 0.0
    assert parse_fix("fixed-scale").scale == 0.1
    assert parse_fix("none").scale is None
    combo = parse_fix("zero-init+fixed-scale", 0.5)
    assert (combo.name, combo.zero_init, combo.scale) == ("fixed-scale+zero-init", True, 0.5)
    assert parse_fix("zero-init").zero_init and not parse_fix("none").zero_init
    assert not parse_fix(NO_BRANCH).has_branch


@pytest.mark.parametrize(
    "name, scale, field, fragment",
    [
        ("bogus", None, "fix", "valid: none, fixed-scale"),
        ("zero-init+norm-match", None, "fix", "undefined"),
        ("fixed-scale+none", None, "fix", "exactly one join"),
        ("fixed-scale", 0.0, "scale", "> 0"),
        ("fixed-scale", -1.0, "scale", "> 0"),
        ("fixed-scale", float("nan"), "scale", "> 0"),
        ("none", 0.5, "scale", "takes no scale"),
        ("no-branch", 0.5, "scale", "takes no scale"),
    ],
)
def test_invalid_choices_name_the_field(name, scale, field, fragment):
    with pytest.raises(AblateInputError) as info:
        parse_fix(name, scale)
    assert info.value.field == field
    assert fragment in str(info.value)
