"""The SmolLM2 recipe's pieces on tiny Llama models (the real SmolLM2 is never loaded)."""

import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from transformers_pard.apps.recipes import smollm2
from transformers_pard.apps.recipes.prompts import build_prompt_records
from transformers_pard.apps.recipes.smollm2 import (
    FreezeEmbeddingExceptMask,
    TrainSettings,
    build_cut_draft,
    grow_draft,
    hidden_state_stats,
    model_card,
    recipe_commands,
    run_dir_name,
)
from transformers_pard.apps.recipes.smollm2.export import draft_layers
from transformers_pard.draft_io import COMPACT_KEY, load_draft
from transformers_pard.testing import mark_as_pard_draft, tiny_causal_lm, tiny_tokenizer
from transformers_pard.training.data import load_training_examples
from transformers_pard.vocab import load_vocab_subset

MASK = 95
IDS = torch.tensor([[1, 5, 9, 20, 33, 7, 41, 12]])


def tied_target(num_layers: int = 3, **kwargs):
    """SmolLM2-like: the token embedding is also the output head."""
    return tiny_causal_lm("llama", seed=0, num_layers=num_layers, tie_word_embeddings=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# build_cut_draft
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
def test_cut_draft_copies_the_first_layers_exactly(n):
    target = tied_target(3)
    draft = build_cut_draft(target, n)
    assert draft.config.num_hidden_layers == n and target.config.num_hidden_layers == 3
    assert (draft.config.vocab_size, draft.config.hidden_size) == (target.config.vocab_size, target.config.hidden_size)
    own, theirs = draft.state_dict(), target.state_dict()
    kept = {k for k in theirs if not k.startswith("model.layers.") or int(k.split(".")[2]) < n}
    assert set(own) == kept
    for key in own:
        assert torch.equal(own[key], theirs[key]), key
    assert draft.get_output_embeddings().weight.data_ptr() == draft.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("n", [1, 2])
def test_cut_draft_is_the_target_stopped_after_n_layers(n):
    """Its hidden states are the target's up to layer n; its logits are the target's head on the
    target's layer-n state through the same final norm."""
    target = tied_target(3)
    draft = build_cut_draft(target, n).eval()
    with torch.no_grad():
        ours = draft(IDS, output_hidden_states=True)
        theirs = target(IDS, output_hidden_states=True).hidden_states
        normed = target.model.norm(theirs[n])
        assert len(ours.hidden_states) == n + 1
        for i in range(n):
            assert torch.equal(ours.hidden_states[i], theirs[i]), i
        assert torch.equal(ours.hidden_states[n], normed)
        assert torch.equal(ours.logits, target.lm_head(normed))


def test_cut_of_all_layers_is_the_target():
    target = tied_target(2)
    with torch.no_grad():
        assert torch.equal(build_cut_draft(target, 2).eval()(IDS).logits, target(IDS).logits)


@pytest.mark.parametrize("layers,chosen", [((0, -1), (0, 3)), ((1, 2), (1, 2)), ((0, 2), (0, 2))])
def test_cut_draft_copies_the_chosen_target_layers(layers, chosen):
    target = tied_target(4)
    draft = build_cut_draft(target, 2, layers=layers)
    assert draft.config.num_hidden_layers == 2
    for i, source in enumerate(chosen):
        theirs = target.model.layers[source].state_dict()
        for key, tensor in draft.model.layers[i].state_dict().items():
            assert torch.equal(tensor, theirs[key]), (i, key)
    assert torch.equal(draft.model.norm.weight, target.model.norm.weight)
    assert torch.equal(draft.get_input_embeddings().weight, target.get_input_embeddings().weight)


@pytest.mark.parametrize("layers,match", [((0,), "names 1 layers, --num-layers is 2"), ((2, 1), "distinct layers in the target"),
                                          ((0, 0), "distinct layers"), ((0, 4), "layers 0..3"), ((-5, 0), "layers 0..3")])
def test_a_bad_layer_choice_is_refused(layers, match):
    with pytest.raises(ValueError, match=match):
        build_cut_draft(tied_target(4), 2, layers=layers)


def test_a_cut_of_no_layers_is_refused():
    with pytest.raises(ValueError, match="layers 0..3, the draft asks for \\[\\]"):
        build_cut_draft(tied_target(4), 0)


def test_target_layers_name_the_cut_and_exclude_init_from(tmp_path, monkeypatch):
    target = tied_target(3)
    monkeypatch.setattr(smollm2.train, "load_smollm2", lambda **kwargs: (target, tiny_tokenizer()))
    folder = smollm2.train.init_draft_folder(str(tmp_path), TrainSettings(num_layers=2, target_layers=(0, -1)))
    assert folder == str(tmp_path / "cut-l2-t0_-1")
    draft = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(draft.model.layers[1].mlp.up_proj.weight, target.model.layers[2].mlp.up_proj.weight)
    assert smollm2.train.init_draft_folder(str(tmp_path), TrainSettings(num_layers=2)) == str(tmp_path / "cut-l2")
    with pytest.raises(ValueError, match="--target-layers.*--init-from"):
        TrainSettings(target_layers=(0, 1, 2), init_from=folder)


def test_cut_draft_is_fp32_and_drops_quantization_settings():
    target = tied_target(2, dtype=torch.bfloat16)
    target.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF-loaded target carries
    draft = build_cut_draft(target, 1)
    assert draft.dtype == torch.float32
    assert not hasattr(draft.config, "quantization_config")
    assert hasattr(target.config, "quantization_config")  # the target's config is left alone
    assert torch.equal(draft.model.layers[0].mlp.up_proj.weight, target.model.layers[0].mlp.up_proj.weight.float())


# ---------------------------------------------------------------------------------------------
# grow_draft
# ---------------------------------------------------------------------------------------------


def trained_draft(target, n: int = 1):
    """A cut draft whose layers no longer equal the target's (as after training), mask token recorded."""
    draft = mark_as_pard_draft(build_cut_draft(target, n), mask_token_id=MASK)
    with torch.no_grad():
        for p in draft.model.layers.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return draft


@pytest.mark.parametrize("have,grow_to", [(1, 2), (1, 3), (2, 3)])
def test_grown_draft_computes_what_the_draft_did(have, grow_to):
    target = tied_target(3)
    draft = trained_draft(target, have).eval()
    grown = grow_draft(draft, target, grow_to).eval()
    assert grown.config.num_hidden_layers == grow_to and draft.config.num_hidden_layers == have
    assert (grown.config.pard_token, grown.config.spd_type) == (MASK, "pard")
    with torch.no_grad():
        torch.testing.assert_close(grown(IDS).logits, draft(IDS).logits, rtol=0, atol=0)


def test_grown_layers_are_the_targets_next_layers_with_silent_outputs():
    target = tied_target(3)
    draft = trained_draft(target, 1)
    grown = grow_draft(draft, target, 3)
    kept = draft.model.layers[0].state_dict()
    for key, tensor in grown.model.layers[0].state_dict().items():
        assert torch.equal(tensor, kept[key]), key  # the draft's own (trained) layer, not the target's
    assert torch.equal(grown.model.norm.weight, draft.model.norm.weight)
    for i in (1, 2):
        new, theirs = grown.model.layers[i], target.model.layers[i]
        assert torch.equal(new.self_attn.q_proj.weight, theirs.self_attn.q_proj.weight)
        assert torch.equal(new.mlp.up_proj.weight, theirs.mlp.up_proj.weight)
        assert not new.self_attn.o_proj.weight.any() and not new.mlp.down_proj.weight.any()
        assert theirs.self_attn.o_proj.weight.any()  # the target is left alone
    assert grown.get_output_embeddings().weight.data_ptr() == grown.get_input_embeddings().weight.data_ptr()


def test_grown_layers_learn():
    """Zeroed outputs still receive gradients, so the new layers do not stay silent."""
    target = tied_target(3)
    grown = grow_draft(trained_draft(target, 1), target, 2)
    train_steps(grown, steps=2)
    assert grown.model.layers[1].self_attn.o_proj.weight.any() and grown.model.layers[1].mlp.down_proj.weight.any()
    assert grown.model.layers[1].mlp.up_proj.weight.ne(target.model.layers[1].mlp.up_proj.weight).any()


@pytest.mark.parametrize("grow_to,match", [(1, "needs more layers than 2"), (2, "needs more layers than 2"),
                                           (4, "the target has 3 layers")])
def test_growing_to_no_new_layers_or_past_the_target_is_refused(grow_to, match):
    target = tied_target(3)
    with pytest.raises(ValueError, match=match):
        grow_draft(trained_draft(target, 2), target, grow_to)


# ---------------------------------------------------------------------------------------------
# FreezeEmbeddingExceptMask
# ---------------------------------------------------------------------------------------------


def train_steps(model, steps: int = 2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # the recipe's weight decay
    ids = torch.tensor([[1, 5, MASK, MASK, 9, 20, MASK, 7, 33]])
    for _ in range(steps):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()


def changed_rows(before, after):
    return (before != after).any(dim=1).nonzero().flatten().tolist()


@pytest.mark.parametrize("tied", [True, False])
def test_only_the_mask_row_of_the_embedding_learns(tied):
    model = tiny_causal_lm("llama", num_layers=1, tie_word_embeddings=tied).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FreezeEmbeddingExceptMask(MASK).on_train_begin(None, None, None, model=model)
    train_steps(model)
    assert changed_rows(before["model.embed_tokens.weight"], model.get_input_embeddings().weight) == [MASK]
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], model.model.layers[0].mlp.up_proj.weight)
    if tied:  # the tied head is the same matrix: frozen too, except the mask row
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_freezing_the_mask_row_too_freezes_the_whole_tied_matrix():
    """``mask_token_id=None``: no row learns and autograd computes no gradient for the embedding/head."""
    model = tiny_causal_lm("llama", num_layers=1, tie_word_embeddings=True).train()
    before = model.get_input_embeddings().weight.detach().clone()
    FreezeEmbeddingExceptMask(None).on_train_begin(None, None, None, model=model)
    train_steps(model)
    assert torch.equal(before, model.get_input_embeddings().weight)
    assert model.get_input_embeddings().weight.grad is None
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_without_the_callback_many_rows_learn():
    """The control: the same steps change the rows of every token seen (and, tied, all rows)."""
    model = tiny_causal_lm("llama", num_layers=1, tie_word_embeddings=True).train()
    before = model.get_input_embeddings().weight.detach().clone()
    train_steps(model)
    assert len(changed_rows(before, model.get_input_embeddings().weight)) > 10


# ---------------------------------------------------------------------------------------------
# hidden_state_stats
# ---------------------------------------------------------------------------------------------


def test_hidden_state_stats_one_entry_per_hidden_state():
    target = tiny_causal_lm("llama", num_layers=3)
    stats = hidden_state_stats(target, IDS)
    with torch.no_grad():
        states = target(IDS, output_hidden_states=True).hidden_states
    assert [s["index"] for s in stats] == [0, 1, 2, 3]
    for s, h in zip(stats, states):
        assert s["rms"] == pytest.approx(torch.linalg.vector_norm(h).item() / math.sqrt(h.numel()), rel=1e-5)
        rest = h[0, 1:]
        assert s["rms_after_first"] == pytest.approx(torch.linalg.vector_norm(rest).item() / math.sqrt(rest.numel()),
                                                     rel=1e-5)
        assert s["max_after_first"] == pytest.approx(rest.abs().max().item())
    assert stats[-1]["rms"] == pytest.approx(1.0, rel=0.05)  # the last one is after the final RMS norm


def test_hidden_state_stats_separate_the_first_position():
    """A massive activation on the first token shows in rms but not in the after-first figures."""
    target = tiny_causal_lm("llama", num_layers=1)
    quiet = hidden_state_stats(target, IDS)[0]
    with torch.no_grad():
        target.get_input_embeddings().weight[IDS[0, 0]] *= 1000
    loud = hidden_state_stats(target, IDS)[0]
    assert loud["rms"] > 100 * quiet["rms"]
    assert loud["rms_after_first"] == pytest.approx(quiet["rms_after_first"])
    assert loud["max_after_first"] == pytest.approx(quiet["max_after_first"])


# ---------------------------------------------------------------------------------------------
# names, model card, export
# ---------------------------------------------------------------------------------------------


def test_run_dir_name():
    assert run_dir_name(8, 3) == "draft-k8-l3"
    assert run_dir_name(1, 2) == "draft-k1-l2"
    assert run_dir_name(8, 3, True) == "draft-k8-l3-pard2"


TAU = {"prompts": 10, "k_eval": 8, "max_new_tokens": 128, "tau": 1.7234}


def test_model_card_quotes_the_measurement():
    card = model_card(k=8, num_layers=3, tau=TAU)
    assert card.startswith("# SmolLM2-135M-Instruct PARD parallel draft")
    assert "**tau = 1.72**" in card and "Measured on 10 held-out prompts" in card and "K=8, 128 new tokens" in card
    assert "first 3 layers" in card and "--k 8 --num-layers 3" in card and "K=8 copies" in card
    assert "pard_embedding_from_target: true" in card and "load_draft" in card


def test_model_card_variants():
    assert "tau: not measured." in model_card(k=8, num_layers=3, tau=None)
    assert "autoregressive (K=1) draft" in model_card(k=1, num_layers=3, tau=None)
    card = model_card(k=8, num_layers=3, tau={**TAU, "tau_independent": 1.781}, pard2=True)
    assert "PARD-2 dual-mode draft" in card and "Target-independent mode: tau = 1.78." in card
    assert "Target-independent" not in model_card(k=8, num_layers=3, tau=TAU, pard2=True)


def test_model_card_says_what_data_the_run_read(tmp_path):
    from transformers_pard.apps.recipes.smollm2.export import data_summary

    tokenizer = tiny_tokenizer()
    rows = [{"id": "g0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c"}]}] * 2
    for name in ("distill.jsonl", "distill-instruct-s2.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = len(tokenizer("a b c", add_special_tokens=False)["input_ids"])
    summary = data_summary(str(tmp_path), tokenizer)
    assert summary == (f"`distill.jsonl` 2 answers / {2 * tokens:,} tokens; "
                       f"`distill-instruct-s2.jsonl` 2 answers / {2 * tokens:,} tokens")
    assert f"* Data of the last run: {summary}." in model_card(k=8, num_layers=3, tau=None, data=summary)


def write_recipe(folder, **overrides):
    record = {"k": 8, "num_layers": 3, "epochs": 1.0, "max_steps": -1, "lr": 3e-4, "warmup_steps": 20,
              "init_from": None, "run_name": None, "pard2": False, "pard2_layers": [-1, -20], "pard2_scale": 0.1}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / smollm2.RECIPE_FILE).write_text(json.dumps({**record, **overrides}))


def test_recipe_commands_follow_init_from_and_quote_only_what_differs(tmp_path):
    assert recipe_commands(str(tmp_path / "unrecorded")) == []
    write_recipe(tmp_path / "first")
    write_recipe(tmp_path / "second", init_from=str(tmp_path / "first"), run_name="second", lr=2e-4, pard2=True)
    first, second = recipe_commands(str(tmp_path / "second"))
    assert first == "python -m transformers_pard recipe smollm2 --stage train --k 8 --num-layers 3"
    assert second == (f"{first} --lr 0.0002 --init-from {tmp_path / 'first'} --run-name second"
                      " --pard2 --pard2-layers -1 -20 --pard2-scale 0.1")
    card = model_card(k=8, num_layers=3, tau=TAU, commands=[first, second])
    assert f"`{first}`; then `{second}`" in card
    write_recipe(tmp_path / "third", init_from=str(tmp_path / "second"), freeze_mask_row=True, dtype="fp32",
                 pard2=True, pard2_standardize=True)
    assert recipe_commands(str(tmp_path / "third"))[-1] == (
        f"{first} --init-from {tmp_path / 'second'} --pard2 --pard2-layers -1 -20 --pard2-scale 0.1"
        " --pard2-standardize --freeze-mask-row --dtype fp32")
    write_recipe(tmp_path / "fourth", init_from=str(tmp_path / "second"), pard2=True, pard2_projection_only=True,
                 optim="sgd", optim_args="momentum=0.9", pard2_cache="runs/cache")
    fourth = recipe_commands(str(tmp_path / "fourth"))[-1]
    assert fourth.endswith("--pard2-scale 0.1 --pard2-projection-only --pard2-cache runs/cache")
    assert " --optim sgd --optim-args momentum=0.9 " in fourth


def test_projection_only_and_cache_need_pard2(tmp_path):
    with pytest.raises(ValueError, match="--pard2-projection-only.*--pard2"):
        smollm2.train_stage(str(tmp_path), settings=TrainSettings(pard2_projection_only=True))
    with pytest.raises(ValueError, match="--pard2-cache.*--pard2"):
        smollm2.train_stage(str(tmp_path), settings=TrainSettings(pard2_cache=str(tmp_path / "cache")))


def test_a_compact_init_draft_is_trained_from_a_full_copy_written_once(tmp_path, monkeypatch):
    from transformers_pard.draft_io import save_compact_draft

    target = tied_target(2)
    draft = mark_as_pard_draft(build_cut_draft(target, 1), mask_token_id=MASK)
    save_compact_draft(draft, tmp_path / "shipped", dtype=torch.float32, tokenizer=tiny_tokenizer())
    loads = []
    monkeypatch.setattr(smollm2.train, "load_smollm2", lambda **kwargs: loads.append(1) or (target, tiny_tokenizer()))
    full = smollm2.full_draft_folder(str(tmp_path / "shipped"), str(tmp_path / "out"))
    digest = smollm2.train.weights_digest(str(tmp_path / "shipped"))
    assert full == str(tmp_path / "out" / f"full-shipped-{digest}") and loads == [1]
    assert COMPACT_KEY not in json.loads((tmp_path / "out" / f"full-shipped-{digest}" / "config.json").read_text())
    back = load_draft(full, target=target)
    for key, value in draft.state_dict().items():  # the embedding too: the target's, with the mask row
        assert torch.equal(back.state_dict()[key], value), key
    assert smollm2.full_draft_folder(full, str(tmp_path / "out")) == full  # a full folder is used as it is
    smollm2.full_draft_folder(str(tmp_path / "shipped"), str(tmp_path / "out"))
    assert loads == [1]  # written once
    with torch.no_grad():  # the draft changes in place (a newer shipped draft): a new copy, not the stale one
        next(p for n, p in draft.named_parameters() if "layers" in n).add_(1.0)
    save_compact_draft(draft, tmp_path / "shipped", dtype=torch.float32, tokenizer=tiny_tokenizer())
    newer = smollm2.full_draft_folder(str(tmp_path / "shipped"), str(tmp_path / "out"))
    assert newer != full and loads == [1, 1]
    back = load_draft(newer, target=target)
    for key, value in draft.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_init_from_a_shallower_draft_grows_it_to_num_layers(tmp_path, monkeypatch):
    target = tied_target(3)
    draft = trained_draft(target, 1).eval()
    draft.save_pretrained(tmp_path / "run")
    tiny_tokenizer().save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "chat_template.jinja").write_text("{{ x }}")  # the draft's other files travel with it
    monkeypatch.setattr(smollm2.train, "load_smollm2", lambda **kwargs: (target, tiny_tokenizer()))
    out = str(tmp_path / "out")
    same = smollm2.train.init_draft_folder(out, TrainSettings(init_from=str(tmp_path / "run"), num_layers=1))
    assert same == str(tmp_path / "run")
    grown_dir = smollm2.train.init_draft_folder(out, TrainSettings(init_from=str(tmp_path / "run"), num_layers=3))
    assert os.path.basename(grown_dir).startswith("grown-l3-run-")
    assert (tmp_path / "out" / os.path.basename(grown_dir) / "chat_template.jinja").read_text() == "{{ x }}"
    grown = load_draft(grown_dir, target=target).eval()
    assert grown.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(grown(IDS).logits, draft(IDS).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="has 3 layers, --num-layers asks for 2: pass --num-layers 3"):
        smollm2.train.init_draft_folder(out, TrainSettings(init_from=grown_dir, num_layers=2))


def test_export_stage_writes_a_compact_draft_with_its_card(tmp_path):
    target = tied_target(2)
    draft = mark_as_pard_draft(build_cut_draft(target, 1), mask_token_id=MASK)
    run = tmp_path / "my-run"
    draft.save_pretrained(run)
    tiny_tokenizer().save_pretrained(run)
    (run / "tau.json").write_text(json.dumps(TAU))
    write_recipe(run, num_layers=1, max_steps=5)
    folder = smollm2.export_stage(str(tmp_path), k=8, num_layers=1, run_name="my-run")
    assert folder == str(tmp_path / "export-my-run")
    assert json.loads((tmp_path / "export-my-run" / "config.json").read_text())[COMPACT_KEY] is True
    card = (tmp_path / "export-my-run" / "README.md").read_text()
    assert "**tau = 1.72**" in card and "--stage train --k 8 --num-layers 1 --max-steps 5`" in card
    back = load_draft(folder, target=target)
    for key, value in draft.state_dict().items():
        if key not in ("model.embed_tokens.weight", "lm_head.weight"):  # the borrowed matrix is the target's
            assert torch.equal(back.state_dict()[key], value.bfloat16().float()), key  # bf16 on disk
    embedding, borrowed = back.get_input_embeddings().weight, target.get_input_embeddings().weight
    others = torch.arange(borrowed.shape[0]) != MASK
    assert torch.equal(embedding[others], borrowed[others])
    assert torch.equal(embedding[MASK], borrowed[MASK].bfloat16().float())  # the stored mask row


def test_model_card_names_the_target_layers_a_chosen_or_grown_cut_came_from(tmp_path):
    assert draft_layers(str(tmp_path / "unrecorded"), 3) is None
    write_recipe(tmp_path / "first-n")
    assert draft_layers(str(tmp_path / "first-n"), 3) is None
    write_recipe(tmp_path / "cut", target_layers=[0, 1, 29])
    write_recipe(tmp_path / "more", init_from=str(tmp_path / "cut"))
    write_recipe(tmp_path / "grown", init_from=str(tmp_path / "more"), num_layers=5)
    assert draft_layers(str(tmp_path / "more"), 3) == [0, 1, 29]
    assert draft_layers(str(tmp_path / "grown"), 5) == [0, 1, 29, 3, 4]
    card = model_card(k=8, num_layers=5, tau=None, layers=[0, 1, 29, 3, 4])
    assert "Architecture: the target's layers 0, 1, 29, 3, 4 (in this order) + final norm" in card
    assert "Architecture: the target's first 3 layers + final norm" in model_card(k=8, num_layers=3, tau=None)


def test_export_without_a_trained_run_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained draft in .*never-trained.*--stage train"):
        smollm2.export_stage(str(tmp_path), run_name="never-trained")


def test_data_stage_holds_out_prompts_and_distils_the_rest(tmp_path, monkeypatch):
    model = tiny_causal_lm("llama", num_layers=1, max_positions=1024)
    monkeypatch.setattr(smollm2.data, "load_smollm2", lambda **kwargs: (model, tiny_tokenizer()))
    path = smollm2.data_stage(str(tmp_path), num_prompts=10, heldout=3, batch_size=4, max_new_tokens=2)
    held = [json.loads(line)["data"] for line in (tmp_path / smollm2.HELDOUT_FILE).read_text().splitlines()]
    rows = [json.loads(line) for line in open(path)]
    greedy = [r for r in rows if r["mode"] == "greedy"]
    trained = {r["messages"][0]["content"] for r in rows}
    assert len(held) == 3 and len(greedy) == 10 and len(trained) == 10
    assert not set(held) & trained  # held-out prompts never reach the training data
    assert {r["id"] for r in greedy} == {f"g{i}" for i in range(10)}
    # one sampled answer more for each non-arithmetic training prompt
    family = {prompt: name for name, prompt in build_prompt_records(13, seed=0)}
    sampled = [r for r in rows if r["mode"] == "sampled"]
    assert all(r["id"].startswith("s0-") for r in sampled)
    assert sorted(r["messages"][0]["content"] for r in sampled) == sorted(p for p in trained if family[p] != "math")
    assert len(rows) == len({r["id"] for r in rows})
    assert all(r["messages"][1]["role"] == "assistant" for r in rows)


def test_data_stage_can_answer_a_subset_with_the_same_held_out_split(tmp_path, monkeypatch):
    model = tiny_causal_lm("llama", num_layers=1, max_positions=1024)
    seen = []
    monkeypatch.setattr(smollm2.data, "load_smollm2", lambda **kwargs: seen.append(kwargs["dtype"]) or (model, tiny_tokenizer()))
    full, part = tmp_path / "full", tmp_path / "part"
    smollm2.data_stage(str(full), num_prompts=10, heldout=3, batch_size=4, max_new_tokens=2)
    smollm2.data_stage(str(part), num_prompts=10, heldout=3, batch_size=4, max_new_tokens=2, train_prompts=4,
                       dtype=torch.float32)
    assert (full / smollm2.HELDOUT_FILE).read_text() == (part / smollm2.HELDOUT_FILE).read_text()
    greedy = {json.loads(line)["id"] for line in (part / smollm2.DATA_FILE).read_text().splitlines()
              if json.loads(line)["mode"] == "greedy"}
    assert greedy == {"g0", "g1", "g2", "g3"}
    assert seen[-1] == torch.float32


def shipped_draft_and_data(tmp_path, answer: str, rows: int):
    """A draft folder with a model card (``shipped``) and a recipe data folder of ``rows`` identical chats."""
    draft = mark_as_pard_draft(build_cut_draft(tied_target(2), 1), mask_token_id=MASK)
    shipped = tmp_path / "shipped"
    draft.save_pretrained(shipped)
    tiny_tokenizer().save_pretrained(shipped)
    (shipped / "README.md").write_text("# card\n")
    out = tmp_path / "data"
    out.mkdir()
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]}
    (out / smollm2.DATA_FILE).write_text((json.dumps(chat) + "\n") * rows)
    return shipped, out


def test_subset_stage_gives_a_draft_the_most_frequent_answer_tokens(tmp_path):
    shipped, out = shipped_draft_and_data(tmp_path, "aab", rows=3)
    folder = smollm2.subset_stage(str(out), draft_dir=str(shipped), size=6, export_dir=str(tmp_path / "sub"))
    ids = load_vocab_subset(folder)
    tok = tiny_tokenizer()
    assert ids.numel() == 6 and {tok.eos_token_id, MASK, tok.convert_tokens_to_ids("a")} <= set(ids.tolist())
    assert json.loads((tmp_path / "sub" / "config.json").read_text())["pard_vocab_size"] == 6
    assert "--stage subset" in (tmp_path / "sub" / "README.md").read_text()
    assert load_vocab_subset(str(shipped)) is None  # the source folder is left as it was


def test_store_stage_gives_a_draft_its_training_texts_as_a_lookup_store(tmp_path):
    from transformers_pard.lookup import LookupStore

    shipped, out = shipped_draft_and_data(tmp_path, "abba" * 6, rows=2)
    folder = smollm2.store_stage(str(out), draft_dir=str(shipped), export_dir=str(tmp_path / "with-store"))
    store = LookupStore.load(folder)
    texts = [example["input_ids"] for example in load_training_examples([str(out / smollm2.DATA_FILE)], tiny_tokenizer())]
    assert torch.equal(store.texts, LookupStore.from_texts(texts).texts)  # the chat-formatted training texts
    assert "--stage store" in (tmp_path / "with-store" / "README.md").read_text()
    assert LookupStore.load(str(shipped)) is None  # the source folder is left as it was
