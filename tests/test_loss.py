"""The loss without full-vocabulary logits (kormed.loss): same values and gradients as the model's own
logits for text-only and multimodal Gemma 3, LoRA and trained embeddings (a full copy or new rows only), SFT
labels, padding-free rows, gradient checkpointing and softcapping; no [*, vocab] tensor is ever created; the
trainer step, validation and `kormed eval ppl` give the numbers of the full-logits path."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_multimodal_config, tiny_text_config

from kormed import loss as kloss
from kormed.errors import KormedError
from kormed.models import RuntimeSpec
from kormed.train.config import GEMMA_LINEAR_MODULES, LoraOptions, TrainOptions
from kormed.train.engine.model_setup import lora_target_regex, prepare_model_for_training
from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training

VOCAB = 262144
CHUNK = 8  # tokens per chunk: several chunks per test batch
CPU = RuntimeSpec("cpu", "float32", "sdpa")


def _text_model(**overrides):
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    return Gemma3ForCausalLM(tiny_text_config(**overrides))


def _mm_model():
    from transformers import Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(tiny_multimodal_config())


NEW_ROWS = [7, 300, 4242, 262000]


def _peft(base, train: str, checkpointing: bool = True):
    """Wrap like prepare_model_for_training does; LoRA B random so every LoRA weight gets a gradient."""
    from peft import LoraConfig, get_peft_model

    kwargs = {}
    if train == "all":
        kwargs = {"modules_to_save": ["embed_tokens"], "ensure_weight_tying": True}
    elif train == "new":
        kwargs = {"trainable_token_indices": {"embed_tokens": NEW_ROWS}, "ensure_weight_tying": True}
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=lora_target_regex(base, GEMMA_LINEAR_MODULES), **kwargs)
    torch.manual_seed(1)
    model = get_peft_model(base, config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model.train()


def _padded_batch(rows: list[list[int]], labels: list[list[int]]):
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lr) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)], lab[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), torch.tensor(lr), 1
    return {"input_ids": ids, "attention_mask": mask}, lab


def _sft_batch(seed: int = 0):
    """Two chat-like rows: a prompt without loss, then an answer (a few learned tokens), then padding."""
    rng = random.Random(seed)
    rows, labels = [], []
    for prompt, answer in ((14, 3), (9, 5)):
        seq = [2] + [rng.randrange(3, VOCAB) for _ in range(prompt + answer)]
        rows.append(seq)
        labels.append([-100] * (1 + prompt) + seq[1 + prompt:])
    return _padded_batch(rows, labels)


def _cpt_batch(seed: int = 0):
    rng = random.Random(seed)
    rows = [[2] + [rng.randrange(3, VOCAB) for _ in range(n)] for n in (19, 12)]
    return _padded_batch(rows, rows)


def _loss_and_grads(model, inputs, labels, impl: str, denom: int | None = None):
    model.zero_grad(set_to_none=True)
    n = torch.tensor(denom) if denom is not None else None
    loss = kloss.causal_lm_loss(model, inputs, labels, spec=kloss.LossSpec(impl, CHUNK), num_items_in_batch=n)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def _assert_same(model, inputs, labels, denom: int | None = None, noise: float = 1e-5) -> None:
    ref_loss, ref = _loss_and_grads(model, inputs, labels, "full", denom)
    loss, got = _loss_and_grads(model, inputs, labels, "chunked", denom)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert got.keys() == ref.keys() and ref
    for name in ref:
        assert ref[name].abs().sum() > 0, f"{name}: no gradient, the comparison would be vacuous"
        scale = float(ref[name].abs().max())  # fp32 summation-order noise is relative to the tensor's scale
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=noise * scale, msg=name)


@pytest.mark.parametrize("train", ["lora", "all", "new"])
@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_chunked_equals_full_logits_sft_labels(kind, train):
    """Value and gradients (LoRA, the trained embedding copy, the trained new rows) equal the model's own logits,
    with answer-only labels, padding and gradient checkpointing; the multimodal class's lm_head sits outside
    its language model."""
    model = _peft(_text_model() if kind == "text" else _mm_model(), train)
    inputs, labels = _sft_batch()
    _assert_same(model, inputs, labels, denom=13)  # a larger accumulated batch: the divisor is num_items_in_batch
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if train == "all":
        assert any("modules_to_save" in n for n in names)
    if train == "new":
        assert any("trainable_tokens_delta" in n for n in names)


def test_chunked_applies_final_logit_softcapping():
    """Gemma3ForCausalLM caps its logits with final_logit_softcapping: the chunked loss caps them the same way."""
    def model_with_large_logits(**overrides):
        base = _text_model(**overrides)
        with torch.no_grad():
            base.get_output_embeddings().weight.mul_(50.0)  # tied: logits well beyond the cap
        return _peft(base, "all", checkpointing=False)

    model = model_with_large_logits(final_logit_softcapping=2.0)
    inputs, labels = _cpt_batch()
    # saturated tanh: 1 - tanh^2 amplifies the fp32 summation-order differences of the two matmul layouts
    _assert_same(model, inputs, labels, noise=1e-4)
    assert kloss.output_head(model)[1] == 2.0
    uncapped = model_with_large_logits()  # same weights, no cap: a different loss
    with torch.no_grad():
        a = kloss.causal_lm_loss(model, inputs, labels, spec=kloss.LossSpec())
        b = kloss.causal_lm_loss(uncapped, inputs, labels, spec=kloss.LossSpec())
    assert abs(float(a) - float(b)) > 0.1


def test_padding_free_rows_pass_position_ids():
    """A padding-free row (two examples, position_ids restarting, -100 at the boundary, no attention mask)
    gives the same loss and gradients as full logits, and the sum of the two examples computed apart: the
    position ids reach the model, so the second example does not attend to the first."""
    model = _peft(_text_model(), "lora")
    rng = random.Random(3)
    ex = [[2] + [rng.randrange(3, VOCAB) for _ in range(n)] for n in (8, 6)]
    ex_labels = [[-100] * 4 + e[4:] for e in ex]
    packed = {"input_ids": torch.tensor([ex[0] + ex[1]]),
              "position_ids": torch.tensor([list(range(len(ex[0]))) + list(range(len(ex[1])))])}
    packed_labels = torch.tensor([ex_labels[0] + [-100] + ex_labels[1][1:]])
    _assert_same(model, packed, packed_labels)
    with torch.no_grad():
        spec = kloss.LossSpec()
        together, n = kloss.sequence_nll(model, packed, packed_labels, spec=spec)
        apart = [kloss.sequence_nll(model, {"input_ids": torch.tensor([e])}, torch.tensor([lab]), spec=spec)
                 for e, lab in zip(ex, ex_labels, strict=True)]
    assert int(n) == sum(int(c) for _, c in apart)
    assert float(together) == pytest.approx(sum(float(s) for s, _ in apart), rel=1e-5)


def test_projects_only_learned_positions(monkeypatch):
    """SFT: only the hidden states whose next label is learned reach the vocabulary projection."""
    seen = []
    real = kloss.chunked_nll_sum

    def spy(hidden, *args, **kwargs):
        seen.append(hidden.shape[0])
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(kloss, "chunked_nll_sum", spy)
    model = _peft(_text_model(), "lora", checkpointing=False)
    inputs, labels = _sft_batch()
    kloss.causal_lm_loss(model, inputs, labels, spec=kloss.LossSpec()).backward()
    assert seen == [int(labels[:, 1:].ne(-100).sum())] == [8]


def test_all_masked_micro_batch_is_a_connected_zero():
    model = _peft(_text_model(), "lora", checkpointing=False)
    inputs, labels = _sft_batch()
    loss = kloss.causal_lm_loss(model, inputs, torch.full_like(labels, -100), spec=kloss.LossSpec(),
                                num_items_in_batch=torch.tensor(5))
    loss.backward()
    assert float(loss) == 0.0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _vocab_tensors(fn) -> list[tuple[int, ...]]:
    """Shapes of every non-empty tensor created while `fn` runs (forward and backward) with a vocab-sized
    dimension, other than the shape of the embedding / output matrix itself (or its transpose) and its bias."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    shapes: list[tuple[int, ...]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shapes.extend(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    with Record():
        fn()
    weight_shaped = {(VOCAB, 64), (64, VOCAB), (VOCAB,)}  # the matrix, its gradient, transposed views of them
    return [s for s in shapes if VOCAB in s and s not in weight_shaped and 0 not in s]


@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_no_full_vocabulary_tensor(kind):
    """Behaviour, not a timing: the chunked loss (forward + backward, trained embedding copy included) creates
    no tensor with a vocabulary-sized dimension besides the weight-shaped ones and [at most chunk, vocab] logits
    of one token chunk; the full path builds [batch, seq, vocab]."""
    model = _peft(_text_model() if kind == "text" else _mm_model(), "all")
    inputs, labels = _cpt_batch()
    targets = int(labels[:, 1:].ne(-100).sum())
    assert targets > CHUNK

    def step(impl):
        return lambda: kloss.causal_lm_loss(model, inputs, labels, spec=kloss.LossSpec(impl, CHUNK)).backward()

    chunked = _vocab_tensors(step("chunked"))
    assert chunked and all(len(s) == 2 and min(s) <= CHUNK and max(s) == VOCAB for s in chunked), set(chunked)
    full = _vocab_tensors(step("full"))
    assert any(len(s) == 3 and s[-1] == VOCAB for s in full)  # [batch, seq, vocab]: the recorder sees them


def test_resolve_loss_impl(monkeypatch):
    assert kloss.resolve_loss_impl("auto", "cpu") == "chunked"
    assert kloss.resolve_loss_impl("full", "cuda") == "full"
    with pytest.raises(KormedError, match="needs a CUDA device"):
        kloss.resolve_loss_impl("liger", "cpu")
    monkeypatch.setattr(kloss, "liger_available", lambda: False)
    assert kloss.resolve_loss_impl("auto", "cuda:0") == "chunked"
    with pytest.raises(KormedError, match="liger-kernel"):
        kloss.resolve_loss_impl("liger", "cuda")
    monkeypatch.setattr(kloss, "liger_available", lambda: True)
    assert kloss.resolve_loss_impl("auto", "cuda") == "liger"
    with pytest.raises(KormedError, match="loss_chunk_size"):
        kloss.loss_spec("chunked", "cpu", chunk_size=0)


def test_lora_on_lm_head_is_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_text_model(), LoraConfig(r=2, target_modules=["lm_head"], task_type="CAUSAL_LM"))
    with pytest.raises(KormedError, match="lm_head"):
        kloss.output_head(model)


# ---- the trainer and the evaluation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tiny_gemma3_dir):
    return tiny_gemma3_dir


def _blocks(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[2] + [rng.randrange(3, VOCAB) for _ in range(rng.randrange(6, 24))] for _ in range(n)]


def _trainer_run(model_dir, tok, tmp_path, impl: str, bs: int, ga: int, blocks):
    from datasets import Dataset

    torch.manual_seed(0)
    model, tok, _ = prepare_model_for_training(
        str(model_dir), lora=LoraOptions(dropout=0.0, train_embeddings=True), runtime=CPU, log=lambda m: None,
        tokenizer=tok,
    )
    opts = TrainOptions(batch_size=bs, grad_accum=ga, max_steps=1, eval_steps=1000, logging_steps=1, lr=0.5,
                        optim="sgd", max_grad_norm=1e9, warmup_ratio=0.0, gradient_checkpointing=True,
                        report_to=[], eval_on_start=False, seed=0, loss_impl=impl)
    ds = Dataset.from_dict({"input_ids": blocks})
    trainer = build_trainer(model, tok, ds, {"val": ds}, CausalCollator(tok), opts,
                            tmp_path / f"{impl}-{bs}x{ga}", runtime=CPU)
    assert trainer.loss_spec.impl == impl
    run_training(trainer, log=lambda m: None)
    log = next(e for e in trainer.state.log_history if "loss" in e)
    metrics = trainer.evaluate()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return log["loss"], log["grad_norm"], metrics, weights


def test_trainer_step_and_validation_match_full_logits(tiny_dir, real_tokenizer, tmp_path):
    """One SGD step with a trained embedding copy: the chunked loss at batch 2 x accumulation 3 logs the loss,
    gradient norm, update and validation numbers of the full-logits loss at batch 6 x accumulation 1."""
    blocks = _blocks(6, seed=5)
    ref = _trainer_run(tiny_dir, real_tokenizer, tmp_path, "full", 6, 1, blocks)
    got = _trainer_run(tiny_dir, real_tokenizer, tmp_path, "chunked", 2, 3, blocks)
    assert got[0] == pytest.approx(ref[0], rel=1e-5)
    assert got[1] == pytest.approx(ref[1], rel=1e-4)
    for key in ("eval_loss", "eval_val_loss", "eval_val_tokens"):
        assert got[2][key] == pytest.approx(ref[2][key], rel=1e-5), key
    for name in ref[3]:
        torch.testing.assert_close(got[3][name], ref[3][name], rtol=1e-4, atol=1e-6, msg=name)


def test_eval_ppl_numbers_unchanged(tiny_dir):
    from transformers import AutoModelForCausalLM

    from kormed.eval.perplexity import evaluate_perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype="float32")
    blocks = _blocks(5, seed=9)
    full = evaluate_perplexity(model, blocks, batch_size=2, progress=False, loss_impl="full")
    chunked = evaluate_perplexity(model, blocks, batch_size=2, progress=False)
    assert chunked["tokens"] == full["tokens"] == sum(len(b) - 1 for b in blocks)
    assert chunked["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert chunked["perplexity"] == pytest.approx(full["perplexity"], rel=1e-5)


@pytest.mark.gpu
def test_liger_equals_full_logits_on_cuda():
    """Liger's fused linear cross-entropy on CUDA: value and gradients of the full-logits loss."""
    if not torch.cuda.is_available() or not kloss.liger_available():
        pytest.skip("needs CUDA and liger-kernel")
    model = _peft(_text_model(final_logit_softcapping=2.0), "all").cuda()
    inputs, labels = _sft_batch()
    inputs, labels = {k: v.cuda() for k, v in inputs.items()}, labels.cuda()
    ref_loss, ref = _loss_and_grads(model, inputs, labels, "full", 13)
    loss, got = _loss_and_grads(model, inputs, labels, "liger", 13)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-3, atol=1e-5, msg=name)
