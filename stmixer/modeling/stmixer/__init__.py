"""The STMixer decoder: adaptive spatio-temporal sampling, adaptive mixing, stages and the decoder head."""

from .decoder import DecoderOutputs, STMDecoder, build_stm_decoder
from .sampling import SAMPLER_IMPLS, PyramidSampler

__all__ = ["DecoderOutputs", "SAMPLER_IMPLS", "PyramidSampler", "STMDecoder", "build_stm_decoder"]
