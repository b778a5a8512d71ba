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
    """Each prompt is read once and its cache repeated for the n samples: the samples are those HF's own
    `num_return_sequences` draws, also for left-padded prompts of different lengths."""
    t = make_teacher("transformers", str(tiny_lm), dtype="float32")
    enc = t.tokenizer(["PersonX goes to the store and buys", "a", "PersonX eats"], return_tensors="pt", padding=True,
                      add_special_tokens=False)
    assert enc["attention_mask"].sum(1).tolist() != [enc["input_ids"].shape[1]] * 3  # padded rows exist
    common = {"do_sample": True, "top_p": 0.9, "top_k": None, "max_new_tokens": 8,
              "pad_token_id": t.tokenizer.pad_token_id}
    with torch.inference_mode():
        torch.manual_seed(7)
        expected = t.lm.generate(**enc, num_return_sequences=3, **common)
        torch.manual_seed(7)
        shared = t._shared_prefill(enc, 3)
        got = t.lm.generate(**shared, **common)
    assert "past_key_values" in shared and shared["input_ids"].shape[0] == 9
    assert torch.equal(got, expected)


def test_transformers_teacher_computes_in_the_hardware_precision(tiny_lm, monkeypatch):
    monkeypatch.setenv("SKD_PRECISION", "bfloat16")
    assert make_teacher("transformers", str(tiny_lm)).lm.dtype == torch.bfloat16
    monkeypatch.setenv("SKD_PRECISION", "float32")
    assert make_teacher("transformers", str(tiny_lm)).lm.dtype == torch.float32
    assert make_teacher("transformers", str(tiny_lm), dtype="bfloat16").lm.dtype == torch.bfloat16  # asked for
