"""Images: `pixel_values` `[B, C, H, W]`, codes `[h, w]`, PNG/JPEG/... files, PSNR/SSIM, a reconstruction grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..image_processing_vqvae import VQVAEImageProcessor
from ..metrics import mse_per_image, psnr_per_image, ssim_per_image
from .base import Modality, Note

__all__ = ["IMAGE_COLUMN_CANDIDATES", "IMAGE_SUFFIXES", "ImageModality", "save_reconstruction_grid"]

IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture", "photo")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Images in the reconstruction grid of an evaluation.
GRID_IMAGES = 16


class ImageModality(Modality):
    name = "image"
    input_name = "pixel_values"
    model_input_names = ("pixel_values",)
    column_candidates = IMAGE_COLUMN_CANDIDATES
    folder_builder = "imagefolder"
    file_suffixes = IMAGE_SUFFIXES
    default_suffix = ".png"
    code_layout = "[h, w]"
    picture_stem = "reconstructions"
    picture_caption = "originals (odd rows) and reconstructions (even rows)"
    hub_task = "image-feature-extraction"

    @property
    def processor_class(self) -> type:
        return VQVAEImageProcessor

    def processor_for(self, config, **kwargs) -> VQVAEImageProcessor:
        return VQVAEImageProcessor(
            **{"num_channels": config.in_channels, "size_divisor": config.downsampling_factor, **kwargs}
        )

    # -- datasets -----------------------------------------------------------------------------------------
    def batch(self, processor, values: Sequence, sampling_rates=None) -> dict[str, torch.Tensor]:
        # The images of one batch must share a size (the processor stacks them).
        return {"pixel_values": processor(list(values), return_tensors="pt").pixel_values}

    def grid_of(self, processor, value, config) -> tuple[int, ...]:
        """The code grid of one image, measured after the processor's resizing and padding."""
        pixels = processor([value], return_tensors="pt").pixel_values
        return tuple(size // config.downsampling_factor for size in pixels.shape[2:])

    # -- files --------------------------------------------------------------------------------------------
    def read_file(self, path, config, note: Note | None = None):
        """An 8-bit PIL image (16-bit scaled, the media_io policy); the processor converts its channels."""
        from PIL import Image

        from ..media_io import WIDE_IMAGE_MODES, load_image

        path = Path(path)
        self._check_exists(path)
        try:
            image = load_image(path)
            with Image.open(path) as opened:
                mode = opened.mode
        except (ValueError, OSError) as error:
            detail = str(error.__cause__ or error).strip().splitlines()[0]
            raise ValueError(
                f"{path}: cannot read it as an image ({detail}); convert it to PNG first"
            ) from error
        if mode in WIDE_IMAGE_MODES:
            self._note(note, f"{path}: scaled {mode} greyscale to 8 bits")
        channels = 1 if image.mode in ("L", "LA") else 3
        if channels != config.in_channels:
            wanted = "greyscale" if config.in_channels == 1 else "RGB"
            self._note(note, f"{path}: converted {image.mode} to {wanted} for the model")
        return image

    def file_batches(self, paths: Sequence[Path], batch_size: int) -> list[list[int]]:
        """Batches of images of one size; sorted by size, so each batch is as full as it can be."""
        from PIL import Image

        sizes = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    sizes.append(image.size)
            except OSError as error:
                detail = str(error).strip().splitlines()[0]
                raise ValueError(f"{path}: cannot read it as an image ({detail})") from error
        batches, current = [], []
        for index in sorted(range(len(paths)), key=lambda index: sizes[index]):
            if current and (len(current) == batch_size or sizes[current[0]] != sizes[index]):
                batches.append(current)
                current = []
            current.append(index)
        return [*batches, current] if current else batches

    def file_inputs(self, processor, item, config) -> tuple[dict[str, torch.Tensor], dict]:
        inputs = processor(item, return_tensors="pt")
        height, width = (int(v) for v in inputs["original_sizes"][0])
        return {"pixel_values": inputs.pixel_values}, {"height": height, "width": width}

    def describe_encoding(self, info: dict, codes, config) -> str:
        shape = "x".join(str(s) for s in codes.shape)
        return f"{info['width']}x{info['height']} px -> {codes.size} codes [{shape}]"

    def postprocess(self, processor, reconstruction: torch.Tensor, info: dict):
        sizes = [(info["height"], info["width"])] if "height" in info else None
        return processor.postprocess(reconstruction, output_type="pil", original_sizes=sizes)[0]

    def write_file(self, path, item, config) -> str:
        from ..media_io import save_image

        save_image(path, item)
        return f"{item.width}x{item.height} px"

    # -- evaluation ---------------------------------------------------------------------------------------
    def _figures(self, inputs, reconstruction, processor, keep_example: bool):
        originals = processor.postprocess(inputs["pixel_values"], output_type="pt")
        reconstructions = processor.postprocess(reconstruction, output_type="pt")
        values = {
            "mse": mse_per_image(reconstructions, originals),
            "psnr": psnr_per_image(reconstructions, originals),
            "ssim": ssim_per_image(reconstructions, originals),
        }
        example = None
        if keep_example:
            example = (originals[:GRID_IMAGES].cpu(), reconstructions[:GRID_IMAGES].cpu())
        return values, example

    def token_figures(self, config, example) -> dict:
        pixels = example[0].shape[-2] * example[0].shape[-1] if example is not None else 0
        positions = pixels / config.downsampling_factor**2
        return {
            "tokens_per_image": int(positions * config.codes_per_position),
            "bits_per_image": round(positions * config.bits_per_position, 2),
        }

    def save_picture(self, example, config, path) -> Path:
        return save_reconstruction_grid(*example, path)

    # -- model cards --------------------------------------------------------------------------------------
    def card_details(self, config, metrics: dict, load_id: str, output_dir=None) -> dict[str, str]:
        factor = config.downsampling_factor
        tokens = metrics.get("tokens_per_image")
        levels = config.codes_per_position
        usage = f"""from PIL import Image
from transformers import pipeline
from vq_tokenizer import VQVAEModel, VQVAEImageProcessor

model = VQVAEModel.from_pretrained("{load_id}").eval()
processor = VQVAEImageProcessor.from_pretrained("{load_id}")
image = Image.new("{"L" if config.in_channels == 1 else "RGB"}", (28, 28))  # your image here
inputs = processor(image, return_tensors="pt")
codes = model.encode(inputs.pixel_values).codes           # LongTensor [1, h, w]
images = processor.postprocess(model.decode(codes).reconstruction, original_sizes=inputs.original_sizes)

# The same through transformers' pipeline() (importing vq_tokenizer registers both tasks):
tokens = pipeline("vq-tokenization", model="{load_id}")(image)    # {{"codes": [[...]], "original_size": (28, 28)}}
picture = pipeline("vq-detokenization", model="{load_id}")(tokens)  # a PIL image of the original size"""
        return {
            "tokens_description": (
                f"{tokens} per image ({levels} per {factor}x{factor} pixels)"
                if tokens and levels > 1
                else f"{tokens} per image ({factor}x{factor} pixels each)"
                if tokens
                else f"{levels if levels > 1 else 'one'} per {factor}x{factor} pixels"
            ),
            "bits_description": (
                f"{metrics['bits_per_image']:g} per image ({config.bits_per_position:g} per {factor}x{factor} pixels)"
                if "bits_per_image" in metrics
                else f"{config.bits_per_position:g} per {factor}x{factor} pixels"
            ),
            "input_description": "images",
            "token_description": f"a grid of discrete codes (one per {factor}x{factor} pixels)",
            "usage_snippet": usage,
        }


def save_reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path
) -> Path:
    """Two rows per group of 8 (originals above, reconstructions below), from `[N, C, H, W]` in [0, 1]."""
    from PIL import Image

    per_row = min(8, originals.shape[0])
    rows = []
    for start in range(0, originals.shape[0], per_row):
        for images in (originals, reconstructions):
            chunk = images[start : start + per_row]
            if chunk.shape[0] < per_row:
                chunk = torch.cat([chunk, torch.zeros(per_row - chunk.shape[0], *chunk.shape[1:])])
            rows.append(torch.cat(list(chunk), dim=-1))
    grid = torch.cat(rows, dim=-2).clamp(0, 1)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    scale = max(1, 256 // max(1, originals.shape[-1]))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return Path(path)
