"""The text-video alignment proxy with a tiny random CLIP (real config classes, Japanese BPE tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.eval.align import Aligner, frame_indices
from training.eval.config import AlignConfig

PROMPTS = [
    "夕暮れの海辺を柴犬が走っている。",
    "森の中を流れる小川、木漏れ日。",
    "夜の街を走る電車、ネオンが光る。",
]


def build_tiny_clip(out: Path) -> Path:
    """A CLIPModel (hidden 32, 2 layers, 32 px) + byte-level BPE tokenizer trained on Japanese text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(PROMPTS * 4, trainer=trainer)
    bos, eos = bpe.token_to_id("<s>"), bpe.token_to_id("</s>")
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=32,
    )
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": bos,
            "eos_token_id": eos,  # not 2: CLIP pools at the first eos token, not the legacy argmax
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _videos(n: int, t: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (t, 40, 56, 3), dtype=np.uint8) for _ in range(n)]


def test_frame_indices_are_evenly_spaced_with_both_ends() -> None:
    assert list(frame_indices(49, 4)) == [0, 16, 32, 48]
    assert list(frame_indices(3, 8)) == [0, 1, 2]
    assert list(frame_indices(10, 1)) == [0]


def test_scores_are_the_mean_frame_cosines_of_the_clip_model(tiny_clip: Path) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    cfg = AlignConfig(enabled=True, model=str(tiny_clip), frames=3, batch_size=2, device="cpu")
    aligner = Aligner.from_config(cfg)
    videos = _videos(3)
    scores = aligner.scores(PROMPTS, videos)
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores)
    assert aligner.scores(PROMPTS, videos) == pytest.approx(scores)  # deterministic
    assert aligner.scores(PROMPTS[:1], videos[:1]) == pytest.approx(scores[:1], abs=1e-5)  # batch-free

    # The same numbers from the model's own forward (logits = scale * cosine), computed independently.
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tok, proc = AutoTokenizer.from_pretrained(tiny_clip), AutoImageProcessor.from_pretrained(tiny_clip)
    for prompt, video, got in zip(PROMPTS, videos, scores, strict=True):
        frames = [video[i] for i in (0, 3, 6)]
        with torch.inference_mode():
            out = model(
                **tok([prompt], return_tensors="pt"),
                pixel_values=proc(images=frames, return_tensors="pt")["pixel_values"],
            )
            cosines = out.logits_per_text[0] / model.logit_scale.exp()
        assert got == pytest.approx(float(cosines.mean()), abs=1e-5)


def test_japanese_prompts_tokenize_without_unknowns(tiny_clip: Path) -> None:
    aligner = Aligner.from_config(AlignConfig(enabled=True, model=str(tiny_clip), device="cpu"))
    ids = aligner.tokenizer(["赤い花が風に揺れている。"])["input_ids"][0]
    assert aligner.tokenizer.unk_token_id not in ids and len(ids) > 3
    assert aligner.text_embeddings(PROMPTS).shape == (3, 16)


def test_a_model_that_does_not_load_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no-such-clip"):
        Aligner.from_config(AlignConfig(enabled=True, model=str(tmp_path / "no-such-clip")))


def test_tokenizer_outputs_are_passed_as_get_text_features_names_them(tiny_clip: Path) -> None:
    """A tokenizer that also returns token_type_ids (BERT-style, as Japanese CLIPs' do): CLIP's
    get_text_features does not name it, so it is left out; what it names is passed."""
    from training.eval.align import _accepted

    aligner = Aligner.from_config(AlignConfig(enabled=True, model=str(tiny_clip), device="cpu"))
    assert {"input_ids", "attention_mask", "position_ids"} <= _accepted(aligner.model.get_text_features)
    assert "token_type_ids" not in _accepted(aligner.model.get_text_features)
    want = aligner.text_embeddings(PROMPTS)
    plain = aligner.tokenizer

    def with_type_ids(*a: object, **kw: object) -> object:
        out = plain(*a, **kw)
        out["token_type_ids"] = torch.ones_like(out["input_ids"]) * 7  # would break the model if passed
        return out

    aligner.tokenizer = with_type_ids
    assert np.allclose(aligner.text_embeddings(PROMPTS), want, atol=1e-6)

    def model_fn(input_ids: object, token_type_ids: object = None) -> None: ...

    assert _accepted(model_fn) == {"input_ids", "token_type_ids"}


def test_remote_code_is_off_by_default_and_a_missing_extra_is_named(
    tiny_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    assert AlignConfig().trust_remote_code is False
    seen = {}

    def fake(name: str, **kw: object) -> object:
        seen.update(kw)
        raise ImportError("This modeling file requires the following packages: timm")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake)
    with pytest.raises(ValueError, match=r"videojp-data\[align\]"):
        Aligner.from_config(AlignConfig(enabled=True, model=str(tiny_clip), revision="abc123"))
    assert seen == {"revision": "abc123", "trust_remote_code": False}
