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
