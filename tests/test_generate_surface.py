"""The rest of ``generate``'s surface with a PARD draft: streamers, stopping, outputs, pipelines, K schedules."""

import time

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer, pipeline
from transformers.generation.streamers import BaseStreamer

from transformers_pard import enable_pard
from transformers_pard.testing import OracleDraft, reference_by_position, tiny_causal_lm, tiny_pard_draft, tiny_tokenizer


@pytest.fixture(scope="module")
def target():
    return enable_pard(tiny_causal_lm("llama", seed=0))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def oracle(target, ids, max_new_tokens, **kwargs):
    """(stock greedy output, an always-right oracle draft for it)."""
    expected = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return expected, OracleDraft(target.config, reference_by_position(expected, torch.ones_like(ids), 0))


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        assert not self.ended
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_streamer_gets_the_final_tokens_in_order_chunk_by_chunk(target):
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(0))
    expected, draft = oracle(target, ids, 20)
    streamer = RecordingStreamer()
    out = target.generate(ids, pard_draft=draft, max_new_tokens=20, num_assistant_tokens=4, streamer=streamer)
    assert torch.equal(out, expected)
    assert streamer.puts[0] == ids[0].tolist()  # the prompt first, like stock generate
    chunks = streamer.puts[1:]
    assert sum(chunks, []) == expected[0, 6:].tolist() and streamer.ended
    assert max(map(len, chunks)) == 5  # whole accepted chunks, not token by token


def test_text_iterator_streamer(target, tokenizer):
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(1))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    out = target.generate(ids, pard_draft=tiny_pard_draft(target), max_new_tokens=12, streamer=streamer)
    assert "".join(streamer).split() == tokenizer.decode(out[0, 6:]).split()


def test_streaming_needs_batch_one(target):
    with pytest.raises(ValueError, match="batch size 1"):
        target.generate(torch.randint(3, 90, (2, 4)), pard_draft=tiny_pard_draft(target), streamer=RecordingStreamer())


def test_stop_string_inside_an_accepted_chunk(target, tokenizer):
    ids = torch.randint(3, 90, (1, 5), generator=torch.Generator().manual_seed(2))
    free, draft = oracle(target, ids, 24)
    stop_word = tokenizer.decode(free[0, 5 + 6 : 5 + 7])  # the 7th new token: mid-chunk at K=8
    expected = target.generate(ids, max_new_tokens=24, stop_strings=[stop_word], tokenizer=tokenizer)
    out = target.generate(ids, pard_draft=draft, max_new_tokens=24, num_assistant_tokens=8,
                          stop_strings=[stop_word], tokenizer=tokenizer)
    assert torch.equal(out, expected) and out.shape[1] <= 5 + 7


class StopAfter(StoppingCriteria):
    """Stops a row once it holds ``n`` tokens."""

    def __init__(self, n):
        self.n = n

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.n, dtype=torch.bool)


def test_custom_stopping_criteria_inside_a_chunk(target):
    ids = torch.randint(3, 90, (1, 5), generator=torch.Generator().manual_seed(3))
    _, draft = oracle(target, ids, 30)
    criteria = StoppingCriteriaList([StopAfter(5 + 11)])
    expected = target.generate(ids, max_new_tokens=30, stopping_criteria=criteria)
    out = target.generate(ids, pard_draft=draft, max_new_tokens=30, num_assistant_tokens=8, stopping_criteria=criteria)
    assert torch.equal(out, expected) and out.shape[1] == 16


def test_max_time_is_honoured(target):
    ids = torch.randint(3, 90, (1, 5))
    start = time.perf_counter()
    out = target.generate(ids, pard_draft=tiny_pard_draft(target), max_new_tokens=200, max_time=0.0)
    assert out.shape[1] == 6 and time.perf_counter() - start < 5  # one token, then time is up


def test_output_dict_scores_and_logits_match_stock(target):
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(4))
    kwargs = dict(max_new_tokens=10, return_dict_in_generate=True, output_scores=True, output_logits=True,
                  repetition_penalty=1.3)
    stock = target.generate(ids, **kwargs)
    draft = OracleDraft(target.config, reference_by_position(stock.sequences, torch.ones_like(ids), 0))
    out = target.generate(ids, pard_draft=draft, num_assistant_tokens=3, **kwargs)
    assert torch.equal(out.sequences, stock.sequences)
    assert len(out.scores) == len(stock.scores) == len(out.logits) == 10
    for ours, theirs in zip(out.scores + out.logits, stock.scores + stock.logits):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert out.pard_stats.rounds == 3 and out.pard_stats.tau == pytest.approx(10 / 3)


def test_num_return_sequences_with_sampling(target):
    ids = torch.randint(3, 90, (2, 4))
    out = target.generate(ids, pard_draft=tiny_pard_draft(target), do_sample=True, num_return_sequences=3,
                          max_new_tokens=6)
    assert out.shape == (6, 10) and torch.equal(out[:, :4], ids.repeat_interleave(3, 0))


def test_pipeline_with_pard_draft_and_assistant_model(target, tokenizer):
    draft = tiny_pard_draft(target)
    plain = pipeline("text-generation", model=target, tokenizer=tokenizer)
    expected = plain("w5 w6 w7", max_new_tokens=8, do_sample=False)
    calls = []
    draft.register_forward_pre_hook(lambda module, args: calls.append(1))  # eager: hooks are fine here
    at_construction = pipeline("text-generation", model=target, tokenizer=tokenizer, pard_draft=draft)
    assert at_construction("w5 w6 w7", max_new_tokens=8, do_sample=False) == expected
    assert calls  # the PARD engine drafted
    calls.clear()
    assert plain("w5 w6 w7", max_new_tokens=8, do_sample=False, assistant_model=draft) == expected
    assert calls


def test_pipeline_chat_messages_and_streaming(target, tokenizer):
    draft = tiny_pard_draft(target)
    chat = [{"role": "user", "content": "w5 w6 w7"}]
    pipe = pipeline("text-generation", model=target, tokenizer=tokenizer)
    expected = pipe(chat, max_new_tokens=8, do_sample=False)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    out = pipe(chat, max_new_tokens=8, do_sample=False, pard_draft=draft, streamer=streamer)
    assert out == expected
    assert "".join(streamer).split() == expected[0]["generated_text"][-1]["content"].split()


@pytest.mark.parametrize("schedule", ["heuristic", "heuristic_transient"])
def test_adaptive_schedule_never_loses_tokens(target, schedule):
    ids = torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(6))
    expected = target.generate(ids, max_new_tokens=40)
    by_position = reference_by_position(expected, torch.ones_like(ids), 0)
    wrong_at = torch.zeros_like(by_position, dtype=torch.bool)
    wrong_at[:, 20:30] = True  # a bad stretch in the middle: K must shrink, then grow again
    draft = OracleDraft(target.config, by_position, wrong_at=wrong_at)
    out = target.generate(ids, pard_draft=draft, max_new_tokens=40, num_assistant_tokens=6,
                          num_assistant_tokens_schedule=schedule, return_dict_in_generate=True, pard_min_tau=None)
    assert torch.equal(out.sequences, expected)
    ks = out.pard_stats.k_per_round
    assert min(ks) < 6 and ks[-1] > min(ks) and max(ks) <= 6


def test_auto_disable_falls_back_to_plain_steps(target):
    ids = torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(7))
    expected = target.generate(ids, max_new_tokens=30)
    draft = OracleDraft(target.config, reference_by_position(expected, torch.ones_like(ids), 0), always_wrong=True)
    out = target.generate(ids, pard_draft=draft, max_new_tokens=30, return_dict_in_generate=True,
                          pard_min_tau=1.5, pard_tau_window=4)
    assert torch.equal(out.sequences, expected)
    stats = out.pard_stats
    assert stats.drafting_disabled_at == 4 and stats.draft_forwards == 4
    assert stats.drafting_tau == 1.0 and stats.drafting_row_rounds == 2 * 4  # the 4 drafting rounds, 2 rows
    assert draft.forward_calls == 1 + 4  # prefill + 4 drafting rounds, then none
    assert stats.k_per_round[4:] == [0] * (30 - 4)
