import pytest
from pydantic import ValidationError

from generators.types import Constraint, Request, Sampling, cut_at_stop, derive_seed


def test_request_key_covers_model_prompt_sampling_and_seed_but_not_meta():
    base = Request(model="m", sampling=Sampling(seed=1), prompt="p", meta={"a": 1})
    assert base.request_id == Request(model="m", sampling=Sampling(seed=1), prompt="p", meta={"b": 2}).request_id
    for other in (Request(model="m2", sampling=Sampling(seed=1), prompt="p"),
                  Request(model="m", sampling=Sampling(seed=2), prompt="p"),
                  Request(model="m", sampling=Sampling(seed=1, temperature=0.5), prompt="p"),
                  Request(model="m", sampling=Sampling(seed=1), prompt="p "),
                  Request(model="m", sampling=Sampling(seed=1), messages=(("user", "p"),))):
        assert other.request_id != base.request_id


def test_seeds_depend_on_content_not_position():
    assert derive_seed(0, "a") == derive_seed(0, "a") != derive_seed(1, "a")
    assert derive_seed(0, "a") != derive_seed(0, "b")


def test_sampling_and_constraint_validation():
    with pytest.raises(ValidationError):
        Sampling(n=0)
    with pytest.raises(ValidationError):
        Sampling(top_p=0)
    with pytest.raises(ValidationError):
        Constraint(regex="a", choice=["x"])
    with pytest.raises(ValueError):
        Request(model="m", sampling=Sampling(), prompt="p", messages=(("user", "p"),))


def test_cut_at_stop():
    assert cut_at_stop("abc\ndef", ("\n",)) == ("abc", True)
    assert cut_at_stop("abc", ("\n", "zz")) == ("abc", False)
    assert cut_at_stop("a.b;c", (";", ".")) == ("a", True)
