"""Encoder profiles: the one registry of everything that differs between them.

A profile names the encoders that make a shot's modality embeddings, how wide
each one is (the fused vector's layout, mediafm.fusion), what the encoders
expect (frame size, audio rate), and the Triton model that serves MediaFM for
that layout (the models' input widths differ, so each profile has its own)::

    profile = get_profile("offline")
    profile.layout.fused_dim        # 2176 = 1280 video + 512 audio + 384 text
    profile.video_model             # "video_efficientnet", a Triton model
    profile.mediafm_model           # "mediafm_offline", MediaFM on Triton

Everything keyed by profile reads it from here: fusion, the encode path, the
streams, the exporter, the dataset writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mediafm.errors import ConfigError
from mediafm.fusion import Layout


@dataclass(frozen=True)
class EncoderProfile:
    """Which models embed each modality for a profile, and what they expect."""

    layout: Layout
    """Widths of the video / audio / text slices of the fused vector, and of the title embedding."""
    video_model: str
    """Triton model taking FRAMES (N, F, frame_size, frame_size, 3) uint8."""
    audio_model: str
    """Triton model taking AUDIO (N, S) float32 at audio_rate, LENGTH (N, 1)."""
    text_model: str
    """Triton model taking TEXT (N, 1) bytes, or "openai" (the embeddings API, called by the client)."""
    mediafm_model: str
    """Triton model serving MediaFM for this layout (mediafm/served_mediafm.py)."""
    frame_size: int
    audio_rate: int
    encoders: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    """What each encoder is, for the dataset's meta.json (lineage)."""

    @property
    def name(self) -> str:
        return self.layout.name


PRODUCTION = EncoderProfile(
    # The source's encoders: CLIP-style video 768 + wav2vec2 768 + text-embedding-3-large@768.
    Layout("production", video=768, audio=768, text=768, title=768),
    "video_clip", "audio_wav2vec2", "openai", "mediafm", 224, 16000,
    {"video": "CLIP vision (clip_dir)", "audio": "wav2vec2 (wav2vec2_dir)", "text": "text-embedding-3-large@768"},
)

OFFLINE = EncoderProfile(
    # Pretrained weights that ship in registry packages (mediafm/media/encoders.py), at their real
    # widths, never padded: EfficientNet-Lite0 pooled features 1280 + aiSFX 512 + all-MiniLM-L6-v2 384;
    # the title is embedded with the same text model.
    Layout("offline", video=1280, audio=512, text=384, title=384),
    "video_efficientnet", "audio_aisfx", "text_minilm", "mediafm_offline", 224, 44100,
    {"video": "efficientnet-lite0 ImageNet (mean of frames)", "audio": "aiSFX 0.1.2 (44.1 kHz)",
     "text": "sentence-transformers/all-MiniLM-L6-v2"},
)

PROFILES: dict[str, EncoderProfile] = {p.name: p for p in (PRODUCTION, OFFLINE)}

ENCODERS: dict[str, str] = {"efficientnet_lite0": "video", "clip": "video", "aisfx": "audio", "wav2vec2": "audio",
                            "minilm": "text"}
"""The encoders a Triton encoder model can run (its config's `encoder` parameter) -> the modality."""


def get_profile(profile: str | Layout | EncoderProfile) -> EncoderProfile:
    """The profile of that name (or of that layout's name). ConfigError naming the known ones."""
    if isinstance(profile, EncoderProfile):
        return profile
    name = profile.name if isinstance(profile, Layout) else profile
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown encoder profile {name!r}; known: {sorted(PROFILES)}") from None


def get_layout(name: str) -> Layout:
    return get_profile(name).layout


def profile_for_widths(video: int, audio: int, text: int) -> EncoderProfile:
    """The profile whose modality widths these are (the fusion model serves them all)."""
    for p in PROFILES.values():
        if (p.layout.video, p.layout.audio, p.layout.text) == (video, audio, text):
            return p
    known = {n: (p.layout.video, p.layout.audio, p.layout.text) for n, p in PROFILES.items()}
    raise ConfigError(f"modality widths (video, audio, text) = {(video, audio, text)} match no encoder profile; "
                      f"known: {known}")


def mediafm_model_for(fused_dim: int, title_dim: int) -> str | None:
    """The Triton model a MediaFM run with these input widths is served by: its profile's; None when no profile
    has them (before: `mediafm`, the production model, which then refused every production window)."""
    for p in PROFILES.values():
        if (p.layout.fused_dim, p.layout.title) == (fused_dim, title_dim):
            return p.mediafm_model
    return None
