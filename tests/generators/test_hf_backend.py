import pytest
import torch

from generators import Request, Sampling, make_teacher
from generators.backends.hf import PenaltyProcessor


def test_penalties_follow_openai_semantics():
    scores = torch.zeros(1, 5)
    ids = torch.tensor([[4, 1, 1, 2]])  # prompt [4], generated [1, 1, 2]
    out = PenaltyProcessor(prompt_len=1, presence=0.5, frequency=0.25)(ids, scores)
    assert out.tolist() == [[0.0, -1.0, -0.75, 0.0, 0.0]]


def test_smollm2_generates_samples_with_stop_logprobs_and_chat(smollm2):
    t = make_teacher("transformers", "smollm2-135m-instruct", batch_size=4)
    s = Sampling(n=3, temperature=1.0, top_p=0.9, max_tokens=24, stop=("\n",), seed=3, logprobs=True)
    reqs = [Request(model=t.model, sampling=s, prompt="1. PersonX goes to the store\n2. PersonX eats an apple\n3."),
            Request(model=t.model, sampling=Sampling(temperature=0, max_tokens=12),
                    messages=(("user", "What is the capital of France?"),))]
    out = t.generate(reqs)
    assert [len(o) for o in out] == [3, 1]
    assert all("\n" not in c.text and c.logprob < 0 and c.n_tokens > 0 for c in out[0])
    assert [c.index for c in out[0]] == [0, 1, 2]
    assert "Paris" in out[1][0].text
    again = t.generate(reqs)
    assert [[c.text for c in o] for o in again] == [[c.text for c in o] for o in out]  # same batch, same samples


def test_shared_prefill_draws_what_num_return_sequences_draws(tiny_lm):
    """Each prompt is read once and its cache repeated for the n samples: in float32 the completions (texts,
    stops, logprobs, with penalties) are those of HF's own `num_return_sequences`, also for left-padded
    prompts of different lengths."""
    t = make_teacher("transformers", str(tiny_lm), dtype="float32", batch_size=3)
    s = Sampling(n=3, temperature=1.0, top_p=0.9, max_tokens=8, stop=("e",), logprobs=True, presence_penalty=0.5,
                 frequency_penalty=0.25)
    prompts = ("PersonX goes to the store and buys", "a", "PersonX")
    reqs = [Request(model=t.model, sampling=s, prompt=p) for p in prompts]
    calls = []
    forward = t.lm.forward
    t.lm.forward = lambda *a, **kw: calls.append(kw["input_ids"].shape) or forward(*a, **kw)
    shared = t.generate(reqs)
    assert t.share_prefill is True and calls[0][0] == 3 and all(c[0] == 9 for c in calls[1:])  # prefill at 3 rows
    t.share_prefill = False
    plain = t.generate(reqs)
    def fields(out):
        return [[(c.text, c.index, c.finish_reason, c.n_tokens) for c in o] for o in out]
    assert fields(shared) == fields(plain)
    # Differently shaped float32 matmuls round differently: CI saw 1.3e-3 nats on a summed logprob of -10.7 (8
    # tokens); the texts, stops and token counts above are still compared exactly.
    assert [c.logprob for o in shared for c in o] == pytest.approx([c.logprob for o in plain for c in o], rel=5e-4,
                                                                   abs=5e-3)
    assert len({c.text for o in shared for c in o}) > 3  # the samples differ: a real draw, not one repeated


def test_a_plain_prompt_gets_the_tokenizers_bos_and_a_chat_prompt_only_its_templates(tiny_lm, tmp_path):
    """A student learns its prompts with the tokenizer's special tokens (train.formats.encode); the backend must
    prompt it the same way. SmolLM2's tokenizer adds none, so this copy of the tiny model's adds a BOS."""
    import shutil

    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    model = tmp_path / "bos-lm"
    shutil.copytree(tiny_lm, model)
    tok = AutoTokenizer.from_pretrained(model)
    bos = (tok.bos_token, tok.bos_token_id)
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos[0]} $A", special_tokens=[bos])
    tok.save_pretrained(model)
    t = make_teacher("transformers", str(model), dtype="float32")
    seen = []
    forward = t.lm.forward
    t.lm.forward = lambda *a, **kw: seen.append(kw["input_ids"][0].tolist()) or forward(*a, **kw)
    greedy = Sampling(temperature=0, max_tokens=2)
    t.generate([Request(model=t.model, sampling=greedy, prompt="PersonX eats xWant [GEN]")])
    assert seen[0] == tok("PersonX eats xWant [GEN]")["input_ids"] and seen[0][0] == bos[1]
    seen.clear()
    chat = Request(model=t.model, sampling=greedy, messages=(("user", "Hi"),))
    t.generate([chat])
    assert seen[0] == tok(t.render(chat), add_special_tokens=False)["input_ids"]  # no second BOS before it


def test_models_whose_cache_is_more_than_keys_and_values_take_the_plain_way(tiny_lm):
    from transformers import DynamicCache

    from generators.backends.hf import shareable

    t = make_teacher("transformers", str(tiny_lm), dtype="float32")
    enc = t.tokenizer(["PersonX goes", "a"], return_tensors="pt", padding=True)
    cache = t.lm(**enc, use_cache=True).past_key_values
    assert isinstance(cache, DynamicCache) and shareable(t.lm, cache)
    assert not shareable(t.lm, None)  # e.g. a recurrent model's output has no past_key_values
    t.lm.generation_config.cache_implementation = "static"  # the model's own cache: generate() builds it
    assert not shareable(t.lm, cache)
    out = t.generate([Request(model=t.model, sampling=Sampling(n=2, max_tokens=4), prompt="PersonX goes")])
    assert t.share_prefill is False and len(out[0]) == 2


def test_transformers_teacher_computes_in_the_hardware_precision(tiny_lm, monkeypatch):
    monkeypatch.setenv("SKD_PRECISION", "bfloat16")
    assert make_teacher("transformers", str(tiny_lm)).lm.dtype == torch.bfloat16
    monkeypatch.setenv("SKD_PRECISION", "float32")
    assert make_teacher("transformers", str(tiny_lm)).lm.dtype == torch.float32
    assert make_teacher("transformers", str(tiny_lm), dtype="bfloat16").lm.dtype == torch.bfloat16  # asked for
