"""Post-hoc latent samplers (Gaussian mixture, masked autoregressive flow) for joint generation."""

from core.samplers.base import (
    LatentSampler,
    SamplerError,
    encode_training_latents,
    load_sampler,
    register_sampler,
    sampler_folder,
)
from core.samplers.gmm import GaussianMixtureSampler
from core.samplers.maf import MAFSampler

__all__ = [
    "GaussianMixtureSampler",
    "LatentSampler",
    "MAFSampler",
    "SamplerError",
    "encode_training_latents",
    "load_sampler",
    "register_sampler",
    "sampler_folder",
]
