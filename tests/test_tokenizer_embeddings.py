"""Embedding resize + mean initialisation for an extended tokenizer, PEFT wiring, and the step-0 loss check."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from kormed.embeddings import new_token_ids, resize_and_init_embeddings, token_pieces
from kormed.tokenizer.extend import build_extended_json, save_tokenizer_dir, segment_units, select_bpe
from kormed.train.engine.model_setup import embedding_param_groups, peft_embedding_kwargs

KOREAN = (
    "당뇨병은 혈당 조절 장애로 인한 대사 질환이다. 인슐린 분비나 작용의 이상으로 발생한다. "
    "고혈압과 당뇨병은 함께 관리해야 하며, 당뇨병 환자는 정기적으로 혈당을 측정한다."
)
ENGLISH = "The patient was diagnosed with type 2 diabetes and started on metformin. Blood pressure was normal."


@pytest.fixture(scope="module")
def ext_tokenizer(embedded_model_dir, tmp_path_factory):
    """A small extension of the real tokenizer built with the library functions (corpus: KOREAN x 5)."""
    from tokenizers import Tokenizer

    from kormed.models import load_tokenizer
    from kormed.tokenizer.extend import korean_units

    base_json = json.loads((embedded_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    base = Tokenizer.from_str(json.dumps(base_json))
    counts = Counter({u: 5 * n for u, n in korean_units([KOREAN]).items()})
    sel = select_bpe(
        base.get_vocab(),
        lambda units: segment_units(base, units),
        counts,
        ["당뇨병", "갑상선기능저하증"],
        max_new_tokens=60,
        max_dict_tokens=30,
        min_frequency=5,
    )
    out = tmp_path_factory.mktemp("ext-tok")
    save_tokenizer_dir(embedded_model_dir, build_extended_json(base_json, sel), out)
    return load_tokenizer(str(out))


def tiny_causal(tie: bool = True):
    from conftest import tiny_text_config
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    return Gemma3ForCausalLM(tiny_text_config(tie_word_embeddings=tie)).eval()


def tiny_multimodal():
    from conftest import tiny_text_config
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(0)
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    cfg = Gemma3Config(text_config=tiny_text_config().to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    return Gemma3ForConditionalGeneration(cfg).eval()


def _check_rows(model, base_tok, ext_tok, ids, original: torch.Tensor) -> None:
    w = model.get_input_embeddings().weight
    n_base = len(base_tok)
    assert w.shape[0] % 64 == 0 and w.shape[0] >= len(ext_tok)
    assert torch.equal(w[:n_base], original[:n_base])  # base rows untouched
    for i in ids:
        pieces = token_pieces(base_tok, ext_tok, i)
        assert len(pieces) >= 2 or ext_tok.convert_ids_to_tokens(i) in ("▁", "")
        torch.testing.assert_close(w[i], original[pieces].mean(dim=0))
    pad = w[len(ext_tok) :]
    torch.testing.assert_close(pad, original[:n_base].mean(dim=0).expand_as(pad))


def test_new_ids_and_pieces(real_tokenizer, ext_tokenizer):
    ids = new_token_ids(real_tokenizer, ext_tokenizer)
    assert ids == list(range(len(real_tokenizer), len(ext_tokenizer))) and len(ids) > 10
    tid = ext_tokenizer.convert_tokens_to_ids("▁당뇨병")
    assert tid in ids
    assert token_pieces(real_tokenizer, ext_tokenizer, tid) == real_tokenizer(" 당뇨병", add_special_tokens=False)[
        "input_ids"
    ]
    with pytest.raises(Exception, match="not an extension"):
        new_token_ids(real_tokenizer, _Shuffled(ext_tokenizer))


class _Shuffled:
    """A tokenizer stand-in whose vocabulary moved one base token (to check the extension guard)."""

    def __init__(self, tok):
        self.vocab = dict(tok.get_vocab())
        self.vocab["<bos>"] = 99

    def get_vocab(self):
        return self.vocab


def test_tied_causal_lm_resize_and_mean_init(real_tokenizer, ext_tokenizer, tmp_path):
    from kormed.models import load_model, pick_runtime

    model = tiny_causal(tie=True)
    original = model.get_input_embeddings().weight.detach().clone()
    ids = resize_and_init_embeddings(model, real_tokenizer, ext_tokenizer)
    assert ids == new_token_ids(real_tokenizer, ext_tokenizer)
    _check_rows(model, real_tokenizer, ext_tokenizer, ids, original)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    rows = model.get_input_embeddings().weight.shape[0]
    assert model.config.vocab_size == rows == math.ceil(len(ext_tokenizer) / 64) * 64
    # save / reload the resized model and the tokenizer
    model.save_pretrained(tmp_path, safe_serialization=True)
    ext_tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), pick_runtime("cpu", "float32"))
    torch.testing.assert_close(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert again.lm_head.weight.data_ptr() == again.get_input_embeddings().weight.data_ptr()
    from kormed.models import load_tokenizer

    tok2 = load_tokenizer(str(tmp_path))
    assert tok2.get_vocab() == ext_tokenizer.get_vocab()
    ids_text = tok2(KOREAN)["input_ids"]
    assert ids_text == ext_tokenizer(KOREAN)["input_ids"]
    with torch.no_grad():
        a = model(input_ids=torch.tensor([ids_text])).logits
        b = again(input_ids=torch.tensor([ids_text])).logits
    torch.testing.assert_close(a, b)


def test_untied_output_side_is_initialised_too(real_tokenizer, ext_tokenizer):
    model = tiny_causal(tie=False)
    with torch.no_grad():
        model.lm_head.weight.normal_()  # distinct from the input side
    out_orig = model.lm_head.weight.detach().clone()
    in_orig = model.get_input_embeddings().weight.detach().clone()
    ids = resize_and_init_embeddings(model, real_tokenizer, ext_tokenizer)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    _check_rows(model, real_tokenizer, ext_tokenizer, ids, in_orig)
    w = model.lm_head.weight
    for i in ids[:10]:
        torch.testing.assert_close(w[i], out_orig[token_pieces(real_tokenizer, ext_tokenizer, i)].mean(dim=0))


def test_multimodal_gemma3_language_model_embeddings(real_tokenizer, ext_tokenizer):
    model = tiny_multimodal()
    original = model.get_input_embeddings().weight.detach().clone()
    ids = resize_and_init_embeddings(model, real_tokenizer, ext_tokenizer)
    _check_rows(model, real_tokenizer, ext_tokenizer, ids, original)
    rows = model.get_input_embeddings().weight.shape[0]
    assert model.config.text_config.vocab_size == rows
    assert model.get_output_embeddings().weight.shape[0] == rows
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ext_tokenizer(KOREAN)["input_ids"]])).logits
    assert logits.shape[-1] == rows and torch.isfinite(logits).all()


def test_peft_trainable_new_rows_only(real_tokenizer, ext_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = tiny_causal(tie=True)
    ids = resize_and_init_embeddings(model, real_tokenizer, ext_tokenizer)
    kwargs = peft_embedding_kwargs(model, ids, train_new_rows_only=True)
    # the tied output side trains with the same delta (ensure_weight_tying: as kormed has always configured it)
    assert kwargs == {"trainable_token_indices": {"embed_tokens": ids}, "ensure_weight_tying": True}
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], **kwargs))
    emb_params = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    assert len(emb_params) == 1 and emb_params[0][1].shape == (len(ids), 64)
    groups = embedding_param_groups(peft_model, lr=1e-4, embedding_lr=1e-3)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3] and groups[1]["params"][0] is emb_params[0][1]
    # changing the trainable delta moves the logits of the new tokens (tied output side follows) and nothing else
    input_ids = torch.tensor([real_tokenizer(ENGLISH)["input_ids"]])
    with torch.no_grad():
        before = peft_model(input_ids=input_ids).logits
        emb_params[0][1].add_(1.0)
        after = peft_model(input_ids=input_ids).logits
    changed = (after - before).abs().amax(dim=(0, 1)) > 1e-6
    assert changed[ids].all() and not changed[: len(real_tokenizer)].any()


def test_peft_whole_matrix_keeps_tying(real_tokenizer, ext_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = tiny_causal(tie=True)
    ids = resize_and_init_embeddings(model, real_tokenizer, ext_tokenizer)
    kwargs = peft_embedding_kwargs(model, ids, train_new_rows_only=False)
    assert kwargs == {"modules_to_save": ["embed_tokens"], "ensure_weight_tying": True}
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], **kwargs))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad and "embed_tokens" in n]
    assert trainable
    input_ids = torch.tensor([real_tokenizer(ENGLISH)["input_ids"]])
    emb = peft_model.get_input_embeddings()
    with torch.no_grad():
        before = peft_model(input_ids=input_ids).logits
        emb.weight[5].add_(1.0)  # the trainable copy: the output side must see it as well (tied)
        after = peft_model(input_ids=input_ids).logits
    assert (after - before)[..., 5].abs().max() > 1e-6


def _nll(model, tok, texts: list[str]) -> tuple[float, int]:
    """Summed next-token NLL over the texts (BOS-first) and the number of predicted tokens."""
    total, n = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        total += loss * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    return total, n


@pytest.mark.slow
def test_step0_loss_on_the_embedded_model(embedded_model_dir, real_tokenizer, ext_tokenizer):
    """Ordinary text: the same loss as the base model. Text with new tokens: the summed NLL stays close."""
    from kormed.models import load_model, pick_runtime

    model = load_model(str(embedded_model_dir), pick_runtime("cpu"))
    base_en = _nll(model, real_tokenizer, [ENGLISH])
    base_ko = _nll(model, real_tokenizer, [KOREAN])
    ids = resize_and_init_embeddings(model, real_tokenizer, ext_tokenizer)
    assert len(ids) > 10
    ext_en = _nll(model, ext_tokenizer, [ENGLISH])
    ext_ko = _nll(model, ext_tokenizer, [KOREAN])
    assert ext_en[1] == base_en[1]  # English is tokenized exactly as before
    assert ext_en[0] == pytest.approx(base_en[0], rel=1e-5)  # measured: identical to the last digit
    assert ext_ko[1] < base_ko[1]  # fewer tokens for the Korean text
    assert ext_ko[0] == pytest.approx(base_ko[0], rel=KOREAN_NLL_TOLERANCE)


# Measured: summed NLL 151.0 -> 197.2 nats (+30.6%) for KOREAN in 26 instead of 58 tokens, before any training
# (mean-of-pieces rows predict a new token with the average of its pieces' logits); +25.5% on 4 law/bill texts
# with a 7,761-token extension. The tolerance leaves room for float differences across machines.
KOREAN_NLL_TOLERANCE = 0.4
