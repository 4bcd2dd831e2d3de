"""The gkabench causal LM on CPU: shapes, hybrids, cached generate() equal to recomputing the full forward for
every mixer, padding and packing, save/load round trip, Auto* registration, presets."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from gkabench.layers import mixer_names
from gkabench.models import GKABenchCache, GKABenchConfig, GKABenchForCausalLM, expand_pattern, preset_config
from gkabench.models.presets import PRESETS, count_params

VOCAB = 50


def tiny(mixer: str, dtype=torch.float64, **kw) -> GKABenchForCausalLM:
    torch.manual_seed(0)
    # A wide init makes greedy decoding pick varied tokens, so the generate test is not trivially constant.
    cfg = preset_config("tiny", mixer=mixer, vocab_size=VOCAB, initializer_range=0.2, **kw)
    return GKABenchForCausalLM(cfg).to(dtype).eval()


def test_forward_shapes_and_loss():
    model = tiny("gka", torch.float32)
    ids = torch.randint(0, VOCAB, (3, 9))
    out = model(ids, labels=ids)
    assert out.logits.shape == (3, 9, VOCAB)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.cache is None  # labels given: training call, no cache
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model(ids, logits_to_keep=1).logits.shape == (3, 1, VOCAB)


def test_loss_on_labeled_positions_only_equals_full_loss():
    """The training path for sparse targets (MQAR): the LM head on the labelled positions only gives the same
    loss and the same gradients as full logits with ignore_index (float64: equal to rounding)."""
    from gkabench.models.modeling import loss_positions_of

    model = tiny("gka").train()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (3, 11), generator=gen)
    labels = ids.masked_fill(torch.rand(3, 11, generator=gen) < 0.6, -100)
    labels[0, 1:] = -100  # a row with no target at all
    positions = loss_positions_of(labels)
    assert positions is not None and len(positions) == int((labels[:, 1:] != -100).sum())
    full = model(ids, labels=labels)
    grads_full = torch.autograd.grad(full.loss, list(model.parameters()))
    part = model(ids, labels=labels, loss_positions=positions)
    assert part.logits is None
    grads_part = torch.autograd.grad(part.loss, list(model.parameters()))
    torch.testing.assert_close(part.loss, full.loss, rtol=1e-12, atol=0)
    for a, b in zip(grads_part, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert loss_positions_of(ids) is None  # every target counts: the plain path


def test_padded_loss_positions_score_the_same_loss_and_gradients():
    """CUDA-graph steps pad the scored positions to a fixed count with the sentinel B * (T - 1); the padding is
    ignored, so loss and gradients equal the unpadded ones (float64: to rounding)."""
    from gkabench.models.modeling import loss_positions_of
    from gkabench.train_graph import pad_loss_positions

    model = tiny("gka").train()
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (3, 11), generator=gen)
    labels = ids.masked_fill(torch.rand(3, 11, generator=gen) < 0.7, -100)
    positions = loss_positions_of(labels)
    padded = pad_loss_positions(positions, capacity=len(positions) + 7, sentinel=3 * 10)
    assert padded.shape == (len(positions) + 7,) and int(padded[-1]) == 30
    plain = model(ids, labels=labels, loss_positions=positions)
    grads_plain = torch.autograd.grad(plain.loss, list(model.parameters()))
    pad = model(ids, labels=labels, loss_positions=padded)
    grads_pad = torch.autograd.grad(pad.loss, list(model.parameters()))
    torch.testing.assert_close(pad.loss, plain.loss, rtol=1e-12, atol=0)
    for a, b in zip(grads_pad, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="capacity"):
        pad_loss_positions(positions, capacity=len(positions) - 1, sentinel=30)


def test_hybrid_pattern():
    assert expand_pattern("gka,gka,gka,attention", 8) == ["gka", "gka", "gka", "attention"] * 2
    assert expand_pattern(["gka", "attention"], 3) == ["gka", "attention", "gka"]
    model = tiny("gka,attention", torch.float32, num_layers=4)
    assert [b.mixer_name for b in model.model.layers] == ["gka", "attention", "gka", "attention"]
    assert [type(b.mixer).name for b in model.model.layers] == ["gka", "attention", "gka", "attention"]
    assert model(torch.randint(0, VOCAB, (1, 5))).logits.shape == (1, 5, VOCAB)


def test_unknown_mixer_is_one_line_error():
    with pytest.raises(ValueError, match="valid names"):
        tiny("gka,nope")


@pytest.mark.parametrize("mixer", sorted(set(mixer_names()) | {"gka,attention"}))
def test_generate_equals_full_forward(mixer):
    """Greedy generate() with the recurrent cache (one new token per call) gives the tokens and logits of
    recomputing the whole sequence each step without a cache."""
    model = tiny(mixer)
    ids = torch.randint(0, VOCAB - 1, (2, 6))  # VOCAB - 1 is the pad id: none in the prompt
    lengths = []
    hook = model.model.register_forward_pre_hook(lambda mod, args, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=VOCAB - 1)
    hook.remove()
    assert lengths == [6, 1, 1, 1, 1], "generate must feed only the new token once a cache exists"
    seq, ref_logits = ids, []
    with torch.no_grad():
        for _ in range(5):
            last = model(seq, use_cache=False).logits[:, -1]
            ref_logits.append(last)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen.sequences, seq)
    for got, ref in zip(gen.logits, ref_logits):
        torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    assert len(set(seq[0, 6:].tolist())) > 1 or len(set(seq[1, 6:].tolist())) > 1


@pytest.mark.parametrize("mixer", ["gka", "attention"])
def test_beam_search_with_cache_equals_without(mixer):
    """Beam search reorders the recurrent caches (GKABenchCache.reorder_cache); without a cache it recomputes."""
    model = tiny(mixer)
    ids = torch.randint(0, VOCAB - 1, (2, 5))
    kw = dict(max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=VOCAB - 1)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw))


@pytest.mark.parametrize("mixer", ["gka", "attention"])
def test_left_padded_generate_matches_unpadded(mixer):
    """A left-padded batch generates what each prompt generates alone."""
    model = tiny(mixer)
    a, b = torch.randint(0, VOCAB, (1, 6)), torch.randint(0, VOCAB, (1, 4))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 2, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :2] = 0
    with torch.no_grad():
        both = model.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        alone_b = model.generate(b, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(both[1, -4:], alone_b[0, -4:])


def test_prefill_then_steps_equals_full_forward_with_cache_object():
    model = tiny("gka,attention", num_layers=2)
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :5], use_cache=True)
        assert isinstance(out.cache, GKABenchCache) and out.cache.get_seq_length() == 5
        steps = [out.logits]
        cache = out.cache
        for t in range(5, 8):
            o = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = o.cache
            steps.append(o.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)
    assert cache.get_seq_length() == 8 and cache.nbytes() > 0


@pytest.mark.parametrize("mixer", ["gka", "attention"])
def test_packed_documents_equal_separate_forwards(mixer):
    model = tiny(mixer)
    a, b = torch.randint(0, VOCAB, (1, 5)), torch.randint(0, VOCAB, (1, 7))
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), cu_seqlens=cu).logits
        sep = torch.cat([model(a).logits, model(b).logits], 1)
    torch.testing.assert_close(packed, sep, rtol=1e-9, atol=1e-9)


def test_save_load_round_trip_and_auto(tmp_path):
    model = tiny("gka,attention", torch.float32, num_layers=2, mixer_options={"gka": {"use_alpha": False}})
    ids = torch.randint(0, VOCAB, (2, 7))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, GKABenchConfig) and cfg.layer_mixers == ["gka", "attention"]
    assert cfg.mixer_options == {"gka": {"use_alpha": False}}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GKABenchForCausalLM)
    assert loaded.model.layers[0].mixer.use_alpha is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    # tied head survives the round trip
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert isinstance(AutoModelForCausalLM.from_config(cfg), GKABenchForCausalLM)


def test_untied_head_round_trip(tmp_path):
    model = tiny("attention", torch.float32, tie_word_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = GKABenchForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_presets_param_counts():
    assert set(PRESETS) >= {"tiny", "125m", "440m"}
    n125 = count_params(preset_config("125m", mixer="gka", vocab_size=32000))
    n440 = count_params(preset_config("440m", mixer="gka", vocab_size=32000))
    assert 100e6 < n125 < 150e6, n125
    assert 400e6 < n440 < 480e6, n440
    cfg = preset_config("440m", mixer="gka")
    assert (cfg.num_layers, cfg.hidden_size, cfg.head_dim) == (28, 1024, 128)


def test_byte_tokenizer_round_trip_and_local_loading(tmp_path):
    from gkabench.tokenizers import BYTE_VOCAB_SIZE, load_tokenizer

    tok = load_tokenizer(None)
    text = "Héllo  wörld\n\tend 🙂"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode()) and len(tok) == BYTE_VOCAB_SIZE
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        again = load_tokenizer(path)
        assert again(text)["input_ids"] == ids and again.eos_token_id == 257
    with pytest.raises(FileNotFoundError, match="no hub downloads"):
        load_tokenizer(tmp_path / "nope")


def abspos_model(**kw) -> GKABenchForCausalLM:
    """Zoology-style attention: learned absolute positions added to the embeddings, no RoPE in the layer."""
    return tiny("attention", learned_positions=16, mixer_options={"attention": {"use_rope": False}}, **kw)


def test_learned_positions_generate_equals_full_forward_and_matter():
    model = abspos_model()
    assert model.model.embed_positions.num_embeddings == 16 and model.model.layers[0].mixer.rotary is None
    ids = torch.randint(0, VOCAB - 1, (2, 6))
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=VOCAB - 1)
        full = model(gen.sequences[:, :-1], use_cache=False).logits[:, 5:]
        # Without its positions a causal attention model without RoPE is order-blind at the last token: swapping two
        # earlier tokens would not change its output. With learned positions it does.
        swapped = gen.sequences[:, :-1].clone()
        swapped[:, [0, 1]] = swapped[:, [1, 0]]
        moved = model(swapped, use_cache=False).logits[:, -1]
    torch.testing.assert_close(torch.stack(gen.logits, 1).double(), full, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(moved, full[:, -1], atol=1e-6)
    # the positions learn: each of the first 5 positions feeds some scored prediction (the 6th only its own, which
    # has no target), positions never seen get nothing
    model(ids, labels=ids).loss.backward()
    grad = model.model.embed_positions.weight.grad
    assert grad[:5].abs().sum(-1).min() > 0 and grad[5:].abs().sum() == 0


def test_learned_positions_left_padding_packing_and_beams():
    """Positions count real tokens: a left-padded prompt and a packed document start at position 0."""
    model = abspos_model()
    a, b = torch.randint(0, VOCAB - 1, (1, 6)), torch.randint(0, VOCAB - 1, (1, 4))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 2, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :2] = 0
    with torch.no_grad():
        both = model.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=VOCAB - 1)
        alone_b = model.generate(b, max_new_tokens=4, do_sample=False, pad_token_id=VOCAB - 1)
        packed = model(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 6, 10], dtype=torch.int32)).logits
        sep = torch.cat([model(a).logits, model(b).logits], 1)
        kw = dict(max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=VOCAB - 1)
        beams = model.generate(a, use_cache=True, **kw), model.generate(a, use_cache=False, **kw)
    assert torch.equal(both[1, -4:], alone_b[0, -4:])
    torch.testing.assert_close(packed, sep, rtol=1e-9, atol=1e-9)
    assert torch.equal(*beams)


def test_learned_positions_limit_is_a_one_line_error_and_round_trips(tmp_path):
    model = abspos_model(dtype=torch.float32)
    with pytest.raises(ValueError, match="at most 16 tokens"):
        model(torch.randint(0, VOCAB, (1, 17)))
    out = model(torch.randint(0, VOCAB, (1, 12)), use_cache=True)
    with pytest.raises(ValueError, match="reaches 18"):
        model(torch.randint(0, VOCAB, (1, 6)), past_key_values=out.cache, use_cache=True)
    model.save_pretrained(tmp_path)
    loaded = GKABenchForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    assert loaded.config.learned_positions == 16
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_blocks_without_mlp_generate_and_round_trip(tmp_path):
    """intermediate_size 0: each block is its mixer alone (as Zoology's MQAR sweep configs); the cache path is unchanged."""
    model = tiny("gka,attention", intermediate_size=0)
    assert all(b.mlp is None and b.mlp_norm is None for b in model.model.layers)
    ids = torch.randint(0, VOCAB - 1, (2, 6))
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=VOCAB - 1)
        full = model(gen.sequences[:, :-1], use_cache=False).logits[:, 5:]
    torch.testing.assert_close(torch.stack(gen.logits, 1).double(), full, rtol=1e-6, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = GKABenchForCausalLM.from_pretrained(tmp_path).to(torch.float64).eval()
    assert loaded.config.intermediate_size == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_dropout_only_while_training_and_off_by_default():
    """Zoology-style dropout (attention probabilities, embeddings) changes training forwards only; at its default 0
    a model draws no random numbers, so earlier runs are unchanged."""
    model = tiny("attention", torch.float32, embed_dropout=0.1, mixer_options={"attention": {"dropout": 0.1}})
    plain = tiny("attention", torch.float32)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=0, atol=0)  # eval: same weights, no dropout
        model.train()
        a, b = model(ids).logits, model(ids).logits
        assert not torch.allclose(a, b)
        plain.train()
        state = torch.get_rng_state()
        plain(ids)
        assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="dropout must be in"):
        tiny("attention", mixer_options={"attention": {"dropout": 1.0}})
