"""Encoder set-up the naive loop and the FFmpeg reference share with the pipeline's sink, so
every part that writes video encodes the same way (codec settings, timestamps, picture types)."""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction

import av

from streamsr.video.encoder import EncodeOptions, encoder_options, parse_bitrate


def encode_options(codec: str | None = None, preset: str | None = None) -> EncodeOptions:
    """The pipeline's default encoder settings (codec, crf, preset, pix_fmt, options), with
    another codec and preset when given."""
    enc = EncodeOptions()
    return dataclasses.replace(enc, codec=codec or enc.codec, preset=preset or enc.preset)


def codec_options(enc: EncodeOptions) -> dict[str, str]:
    """The encoder options the pipeline's sink passes to FFmpeg for `enc`."""
    return encoder_options(enc)


def open_encoder(path: str | os.PathLike, width: int, height: int, rate: Fraction | int,
                 enc: EncodeOptions) -> tuple[av.container.OutputContainer, av.VideoStream]:
    """An output container with one video stream set up like the pipeline's sink."""
    out = av.open(str(path), "w")
    stream = out.add_stream(enc.codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, enc.pix_fmt
    stream.codec_context.thread_count = 0  # as the sink: FFmpeg picks the thread count
    if enc.bitrate:
        stream.codec_context.bit_rate = parse_bitrate(enc.bitrate)
    stream.codec_context.options = codec_options(enc)
    return out, stream


def stamp(frame: av.VideoFrame, index: int, rate: Fraction) -> av.VideoFrame:
    """Frame `index` of a constant-rate clip, with no picture type, ready for the encoder.

    Without real timestamps x264's rate control works from a wrong frame rate and writes a
    smaller video with less work than the pipeline's properly timed output. And a decoded frame
    keeps its I/P/B type through filters, which libx264 obeys: the reference would then copy
    the clip's frame types instead of choosing its own (skipping x264's B-frame decision, a
    cheaper job). Both would make the references unfair (measured in docs/benchmarks.md).
    """
    frame.time_base = Fraction(1) / Fraction(rate)
    frame.pts = index
    frame.pict_type = 0  # AV_PICTURE_TYPE_NONE: let the encoder decide
    return frame
