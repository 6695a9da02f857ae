"""vq_tokenizer: trainable VQ-VAE tokenizers for images and audio, native to the Hugging Face stack."""

# ruff: noqa: E402 - the transformers version is checked before anything imports transformers.
from ._compat import check_transformers_version

check_transformers_version()  # before transformers is imported: an older one fails with a clear message

from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModel

from .configuration_vqvae import VQVAEConfig
from .feature_extraction_vqvae import VQVAEFeatureExtractor
from .image_processing_vqvae import VQVAEImageProcessor
from .modeling_vqvae import (
    VQVAEDecoderOutput,
    VQVAEEncoderOutput,
    VQVAEModel,
    VQVAEOutput,
    VQVAEPreTrainedModel,
    VQVAEQuantizerOutput,
    VQVAEVectorQuantizer,
)
from .quantization_vqvae import (
    VQVAEFiniteScalarQuantizer,
    VQVAEGumbelQuantizer,
    VQVAEQuantizerBase,
    VQVAEResidualVectorQuantizer,
    build_quantizer,
    parallel_nearest_codes,
)
from .token_mapping import CodeTokenLogitsProcessor, CodeTokenMapping

__version__ = "0.1.0"

AutoConfig.register(VQVAEConfig.model_type, VQVAEConfig, exist_ok=True)
AutoModel.register(VQVAEConfig, VQVAEModel, exist_ok=True)
AutoImageProcessor.register(VQVAEConfig, VQVAEImageProcessor, exist_ok=True)
AutoFeatureExtractor.register(VQVAEConfig, VQVAEFeatureExtractor, exist_ok=True)
# A saved folder carries configuration_vqvae.py and modeling_vqvae.py, so that
# `AutoModel.from_pretrained(folder_or_repo, trust_remote_code=True)` works without this package.
VQVAEConfig.register_for_auto_class()
VQVAEModel.register_for_auto_class("AutoModel")
VQVAEImageProcessor.register_for_auto_class("AutoImageProcessor")
VQVAEFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

# Registers the "vq-tokenization" and "vq-detokenization" tasks with transformers' `pipeline()`.
from .pipelines import VQDetokenizationPipeline, VQTokenizationPipeline

__all__ = [
    "VQVAEConfig",
    "VQVAEModel",
    "VQVAEImageProcessor",
    "VQVAEFeatureExtractor",
    "VQVAEPreTrainedModel",
    "VQVAEQuantizerBase",
    "VQVAEVectorQuantizer",
    "VQVAEGumbelQuantizer",
    "VQVAEResidualVectorQuantizer",
    "VQVAEFiniteScalarQuantizer",
    "build_quantizer",
    "parallel_nearest_codes",
    "VQVAEOutput",
    "VQVAEEncoderOutput",
    "VQVAEDecoderOutput",
    "VQVAEQuantizerOutput",
    "CodeTokenMapping",
    "CodeTokenLogitsProcessor",
    "VQTokenizationPipeline",
    "VQDetokenizationPipeline",
]
