"""Tiny random-weight models from the real configs, for tests and the offline demo.

Nothing is downloaded: a CogVideoX VAE with 8-channel blocks (the real class, 8x space, 4x time),
a 2-layer Llama (the architecture of LLM-jp-3) with a byte-level BPE tokenizer trained on a few
Japanese sentences, and transformer overrides that make the CogVideoX DiT 2 layers deep. They are
saved with save_pretrained and loaded back by the trainer through the same from_pretrained calls
as the real models.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from curation.atomic import temp_path

CORPUS = [
    "森の中を流れる小川、木漏れ日が水面にきらめく。",
    "子どもたちが公園で元気に遊んでいる様子をズームで映す。",
    "夜の街を走る電車の窓に明かりが流れていく。",
    "海辺に打ち寄せる波と夕暮れの空。",
    "夕暮れの海辺を柴犬が走っている。",
    "a quiet street in the rain",
]

TINY_TEXT_DIM = 64
TINY_TEXT_LEN = 16
TINY_TRANSFORMER = {
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "time_embed_dim": 32,
    "in_channels": 4,
    "out_channels": 4,
}
TINY_LTX_CHANNELS = 8
VAES = ("cogvideox", "ltx")


def build_tiny_vae(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4
    )
    vae.save_pretrained(folder)
    return folder


def build_tiny_ltx_vae(folder: Path, seed: int = 0) -> Path:
    """The LTX-Video VAE class with 8-channel blocks: the real 32x space, 8x time compression (patch 4
    and three 2x space-time downsamples), 8 latent channels instead of 128."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        latent_channels=TINY_LTX_CHANNELS,
    )
    with torch.no_grad():  # non-trivial channel statistics, so the tests see the standardisation
        vae.latents_mean.copy_(0.1 * torch.randn(TINY_LTX_CHANNELS))
        vae.latents_std.copy_(0.5 + torch.rand(TINY_LTX_CHANNELS))
    vae.save_pretrained(folder)
    return folder


def build_tiny_text_encoder(folder: Path, seed: int = 0) -> Path:
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=["<s>", "</s>"])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bpe.to_str()), bos_token="<s>", eos_token="</s>"
    )
    tok.save_pretrained(folder)  # no pad token, like LLM-jp: the encoders fall back to eos
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def _build_once(folder: Path, build: Callable[[Path, int], Path], seed: int) -> None:
    """Build into a hidden temporary folder and rename it: a kill during the build never leaves a
    folder that looks finished (save_pretrained writes config.json before the weights)."""
    if folder.is_dir():
        return
    tmp = Path(temp_path(folder))
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp, seed)
    os.replace(tmp, folder)


def build_tiny_models(root: Path | str, seed: int = 0, vae: str = "cogvideox") -> dict[str, str]:
    """{"vae": folder, "text_encoder": folder, "vae_cls": preset}; reused when already built.
    vae = cogvideox (root/vae) or ltx (root/vae_ltx, AutoencoderKLLTXVideo)."""
    if vae not in VAES:
        raise ValueError(f"tiny vae {vae!r}: one of {VAES}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vae_dir, text = root / ("vae" if vae == "cogvideox" else "vae_ltx"), root / "text_encoder"
    _build_once(vae_dir, build_tiny_vae if vae == "cogvideox" else build_tiny_ltx_vae, seed)
    _build_once(text, build_tiny_text_encoder, seed)
    return {"vae": str(vae_dir), "text_encoder": str(text), "vae_cls": vae}


def tiny_train_overrides(models: dict[str, str]) -> list[str]:
    """`--set` overrides pointing a train config at the tiny models with a 2-layer DiT. With the LTX
    VAE the DiT's channels and patch are left to the measured latents (8 channels, patch 1)."""
    import json

    transformer = dict(TINY_TRANSFORMER)
    if models.get("vae_cls", "cogvideox") != "cogvideox":
        del transformer["in_channels"], transformer["out_channels"]
    return [
        f"vae.cls={models.get('vae_cls', 'cogvideox')}",
        f"vae.model={models['vae']}",
        "vae.subfolder=null",
        f"text.model={models['text_encoder']}",
        f"text.max_length={TINY_TEXT_LEN}",
        f"model.transformer_config={json.dumps(transformer)}",
    ]
