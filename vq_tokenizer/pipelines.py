"""transformers pipelines for VQ-VAE tokenizers: `"vq-tokenization"` (images or audio -> codes) and
`"vq-detokenization"` (codes -> images or audio).

    >>> import vq_tokenizer  # registers both tasks
    >>> from transformers import pipeline
    >>> tokenize = pipeline("vq-tokenization", model="path/or/repo")
    >>> detokenize = pipeline("vq-detokenization", model="path/or/repo")
    >>> tokens = tokenize("cat.png")          # {"codes": [[...], ...], "original_size": (h, w)}
    >>> image = detokenize(tokens)            # a PIL image of the original size

A folder written by a pipeline's `save_pretrained` (or `push_to_hub`) also carries this file and declares both
tasks in its config (`custom_pipelines`), so `pipeline(task, model=repo, trust_remote_code=True)` works where
`vq_tokenizer` is not installed. transformers then always asks for `trust_remote_code=True` for that folder.

Self-contained on purpose, like the modeling file: it imports only torch, numpy, PIL and transformers, so that it
runs as remote code.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY

TOKENIZATION_TASK = "vq-tokenization"
DETOKENIZATION_TASK = "vq-detokenization"


class _VQVAEPipeline(Pipeline):
    """What both pipelines share: the processor of the model's modality, and saving both tasks."""

    _load_processor = False
    _load_tokenizer = False
    _load_image_processor = None  # loaded when the folder has one: image models
    _load_feature_extractor = None  # audio models
    _load_video_processor = False

    @property
    def modality(self) -> str:
        return self.model.config.modality

    def _modality_processor(self):
        if self.modality == "image":
            if self.image_processor is None:
                raise ValueError(
                    "This image tokenizer has no image processor: save one beside the model "
                    "(`VQVAEImageProcessor(...).save_pretrained(folder)`) or pass `image_processor=`."
                )
            return self.image_processor
        if self.feature_extractor is None:
            raise ValueError(
                "This audio tokenizer has no feature extractor: save one beside the model "
                "(`VQVAEFeatureExtractor(...).save_pretrained(folder)`) or pass `feature_extractor=`."
            )
        return self.feature_extractor

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the model, its processor, this file and both tasks in `config.custom_pipelines`, so that
        `pipeline(task, model=folder_or_repo, trust_remote_code=True)` works without `vq_tokenizer`."""
        if os.path.isfile(save_directory):
            raise ValueError(f"{save_directory} is a file; pass a folder.")
        os.makedirs(save_directory, exist_ok=True)
        module = type(self).__module__.split(".")[-1]
        self.model.config.custom_pipelines = {
            task: {"impl": f"{module}.{cls.__name__}", "pt": ["AutoModel"], "type": "multimodal"}
            for task, cls in (
                (TOKENIZATION_TASK, VQTokenizationPipeline),
                (DETOKENIZATION_TASK, VQDetokenizationPipeline),
            )
        }
        custom_object_save(self, save_directory)
        self.model.save_pretrained(save_directory, **kwargs)
        for processor in (self.image_processor, self.feature_extractor):
            if processor is not None:
                processor.save_pretrained(save_directory, **kwargs)


class VQTokenizationPipeline(_VQVAEPipeline):
    """Images or audio -> the tokenizer's discrete codes.

    Inputs, one item or a list (a batch):
    - image models: a PIL image, a NumPy array or torch tensor (HW, HWC or CHW), a local path, or a URL;
    - audio models: a NumPy array or torch tensor `[T]` or `[C, T]` (floats in [-1, 1]), a dict
      `{"array": ..., "sampling_rate": ...}` (as `datasets` gives), a file path, or the bytes of a file.

    Returns per item `{"codes": ..., "original_size": (height, width)}` (images, codes `[h, w]`) or
    `{"codes": ..., "num_samples": n}` (audio, codes `[t]`): the codes as nested lists of ints, or as a
    `torch.LongTensor` with `return_tensors=True`. The dict is what `"vq-detokenization"` takes back.

    Call options: `sampling_rate` (audio arrays given without one), `timeout` (image URLs), `return_tensors`.
    """

    def _sanitize_parameters(self, sampling_rate=None, timeout=None, return_tensors=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for {TOKENIZATION_TASK}: {sorted(kwargs)}.")
        preprocess = {}
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        if timeout is not None:
            preprocess["timeout"] = timeout
        postprocess = {} if return_tensors is None else {"return_tensors": return_tensors}
        return preprocess, {}, postprocess

    def preprocess(self, inputs, sampling_rate: int | None = None, timeout: float | None = None) -> dict:
        processor = self._modality_processor()
        if self.modality == "image":
            features = processor(_load_image(inputs, timeout), return_tensors="pt")
            return {
                "pixel_values": features["pixel_values"].to(self.model.dtype),
                "original_size": tuple(features["original_sizes"][0]),
            }
        if isinstance(inputs, dict):
            inputs = dict(inputs)
            array = inputs.pop("array", inputs.pop("raw", None))
            if array is None or "sampling_rate" not in inputs:
                raise ValueError('An audio dict needs "array" (or "raw") and "sampling_rate".')
            inputs, sampling_rate = array, inputs["sampling_rate"]
        features = processor(inputs, sampling_rate=sampling_rate, return_tensors="pt")
        return {
            "input_values": features["input_values"].to(self.model.dtype),
            "num_samples": int(features["padding_mask"][0].sum()) if "padding_mask" in features else None,
        }

    def _forward(self, model_inputs: dict) -> dict:
        name = self.model.main_input_name
        codes = self.model.encode(**{name: model_inputs.pop(name)}).codes
        return {"codes": codes, **model_inputs}

    def postprocess(self, model_outputs: dict, return_tensors: bool = False) -> dict:
        codes = model_outputs.pop("codes")[0].cpu()
        if model_outputs.get("num_samples") is None:
            model_outputs.pop("num_samples", None)
        return {"codes": codes if return_tensors else codes.tolist(), **model_outputs}


class VQDetokenizationPipeline(_VQVAEPipeline):
    """Codes -> images or audio.

    Inputs, one item or a list (a batch): the dict `"vq-tokenization"` returns, or the codes alone as a NumPy
    array or torch tensor (`[h, w]` for images, `[t]` for audio). A plain Python list is read as a batch, so
    pass nested lists inside the dict.

    Returns per item a PIL image (images, cropped to `original_size` when given) or
    `{"audio": np.ndarray [C, T], "sampling_rate": int}` (audio, cut to `num_samples` when given).
    """

    def _sanitize_parameters(self, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for {DETOKENIZATION_TASK}: {sorted(kwargs)}.")
        return {}, {}, {}

    def preprocess(self, inputs) -> dict:
        extras = {}
        if isinstance(inputs, dict):
            if "codes" not in inputs:
                raise ValueError('Pass the codes, or a dict with "codes" (what "vq-tokenization" returns).')
            extras = {
                key: inputs[key] for key in ("original_size", "num_samples") if inputs.get(key) is not None
            }
            inputs = inputs["codes"]
        codes = torch.as_tensor(np.asarray(inputs) if isinstance(inputs, list) else inputs)
        expected = self.model.config.spatial_dims
        if codes.dim() != expected:
            layout = "[h, w]" if self.modality == "image" else "[t]"
            raise ValueError(
                f"The codes of one {self.modality} have shape {layout}, got {tuple(codes.shape)}; pass a list "
                "for several items."
            )
        return {"codes": codes[None], **extras}

    def _forward(self, model_inputs: dict) -> dict:
        reconstruction = self.model.decode(model_inputs.pop("codes")).reconstruction
        return {"reconstruction": reconstruction, **model_inputs}

    def postprocess(self, model_outputs: dict):
        reconstruction = model_outputs["reconstruction"].float().cpu()
        processor = self._modality_processor()
        if self.modality == "image":
            size = model_outputs.get("original_size")
            sizes = None if size is None else [tuple(int(v) for v in size)]
            return processor.postprocess(reconstruction, output_type="pil", original_sizes=sizes)[0]
        audio = processor.postprocess(reconstruction)[0]
        num_samples = model_outputs.get("num_samples")
        if num_samples is not None:
            audio = audio[:, : int(num_samples)]
        return {"audio": audio, "sampling_rate": self.model.config.sampling_rate}


def _load_image(inputs, timeout: float | None):
    """A local path is opened as is (16-bit and grey modes reach the processor unchanged); a URL or base64
    string goes through transformers' `load_image`; anything else is passed to the processor."""
    if not isinstance(inputs, str):
        return inputs
    if os.path.isfile(inputs):
        from PIL import Image

        with Image.open(inputs) as image:
            image.load()
            return image
    from transformers.image_utils import load_image

    return load_image(inputs, timeout=timeout)


def register_pipelines() -> None:
    """Register both tasks with transformers' `pipeline()` (done when this module is imported). A task that is
    already registered (by this module imported as remote code, say) is left as it is."""
    for task, pipeline_class in (
        (TOKENIZATION_TASK, VQTokenizationPipeline),
        (DETOKENIZATION_TASK, VQDetokenizationPipeline),
    ):
        if task not in PIPELINE_REGISTRY.supported_tasks:
            PIPELINE_REGISTRY.register_pipeline(
                task, pipeline_class=pipeline_class, pt_model=AutoModel, type="multimodal"
            )


register_pipelines()

__all__ = [
    "TOKENIZATION_TASK",
    "DETOKENIZATION_TASK",
    "VQTokenizationPipeline",
    "VQDetokenizationPipeline",
    "register_pipelines",
]
