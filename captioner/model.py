"""Captioner = encoder + decoder + vocab: the factory, checkpoint round trip and `caption()`.

Every entry point (evaluation, web UI, batch captioning) captions through this class, so
there is one preprocessing, one search and one way to turn tokens into text.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import load_checkpoint
from .decoder import Decoder, DecoderConfig
from .encoder import Encoder, EncoderConfig
from .images import load_image
from .search import DEFAULT_MAX_LEN, SearchResult, search
from .text import Vocab


@dataclass
class ModelConfig:
    encoder: EncoderConfig
    decoder: DecoderConfig

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": asdict(self.encoder), "decoder": asdict(self.decoder)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(EncoderConfig(**d["encoder"]), DecoderConfig(**d["decoder"]))


@dataclass
class CaptionOutput:
    """One image's caption, ready for display or JSON."""
    text: str
    words: list[str]
    score: float  # length-normalised log-probability
    alphas: np.ndarray  # (len(words), h, w) attention of every word
    beams: list[tuple[str, float]] = field(default_factory=list)  # (text, score), best first
    finished: bool = True


class Captioner(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: Vocab, encoder: Encoder | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.encoder = encoder if encoder is not None else Encoder(cfg.encoder)
        self.decoder = Decoder(cfg.decoder)

    @classmethod
    def create(cls, encoder_cfg: EncoderConfig, vocab: Vocab, **decoder_kwargs: Any) -> "Captioner":
        """Build a new model; the decoder's feature size and grid come from the encoder."""
        encoder = Encoder(encoder_cfg)
        dec_cfg = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.channels, grid=encoder.grid,
                                **decoder_kwargs)
        return cls(ModelConfig(encoder_cfg, dec_cfg), vocab, encoder)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.cfg.decoder.grid)

    def transform(self):
        return self.encoder.transform()

    # --- checkpoints --------------------------------------------------------------------
    def model_state(self) -> dict[str, Any]:
        """The "model" entry of a checkpoint (encoder weights only when fine-tuned)."""
        enc = (None if self.encoder.stock_weights
               else {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()})
        return {"config": self.cfg.to_dict(), "vocab": self.vocab.state_dict(),
                "decoder": {k: v.detach().cpu() for k, v in self.decoder.state_dict().items()},
                "encoder": enc}

    @classmethod
    def from_model_state(cls, state: dict[str, Any]) -> "Captioner":
        cfg = ModelConfig.from_dict(state["config"])
        encoder = Encoder(cfg.encoder, load_weights=state.get("encoder") is None)
        if state.get("encoder") is not None:
            encoder.load_state_dict({k: v.float() if v.is_floating_point() else v
                                     for k, v in state["encoder"].items()})
            encoder.weights_from_checkpoint = True
        model = cls(cfg, Vocab.from_state_dict(state["vocab"]), encoder)
        model.decoder.load_state_dict({k: v.float() if v.is_floating_point() else v
                                       for k, v in state["decoder"].items()})
        return model.eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Captioner":
        return cls.from_model_state(load_checkpoint(path)["model"]).to(device)

    # --- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, N, C) features."""
        self.encoder.eval()
        return self.encoder(images.to(self.device))

    def decode(self, feats: torch.Tensor, beam_size: int = 3, max_len: int = DEFAULT_MAX_LEN) -> list[CaptionOutput]:
        """Search on precomputed features (B, N, C); the CNN is not run again."""
        results = search(self.decoder, feats.to(self.device).float(), beam_size, max_len)
        return [self._output(r) for r in results]

    def caption(self, images: Sequence[Any], beam_size: int = 3, max_len: int = DEFAULT_MAX_LEN) -> list[CaptionOutput]:
        """Caption PIL images, paths or bytes, all through the one loader and transform."""
        tf = self.transform()
        batch = torch.stack([tf(load_image(im)) for im in images])
        return self.decode(self.encode(batch), beam_size, max_len)

    def _output(self, r: SearchResult) -> CaptionOutput:
        h, w = self.grid
        words = self.vocab.decode_tokens(r.best.tokens)
        return CaptionOutput(
            text=" ".join(words), words=words, score=r.best.score,
            alphas=r.best.alphas.reshape(len(words), h, w).numpy().astype(np.float32),
            beams=[(self.vocab.decode(b.tokens), b.score) for b in r.beams], finished=r.best.finished)
