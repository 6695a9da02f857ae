"""Image processor for VQ-VAE tokenizers: images -> `pixel_values` in [-1, 1] and back.

Built on transformers' PIL/NumPy backend (`PilBackend`), which infers the channel axis, rescales and
normalises; this class adds channel conversion, padding to a multiple of the downsampling factor and
`postprocess`. It imports only `media_io` from this package, so both files can ship to the Hub next to the
weights for `trust_remote_code`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs
from transformers.utils import TensorType

from .media_io import WIDE_IMAGE_MODES, image_to_8bit, standard_mode

__all__ = ["VQVAEImageProcessor"]

SUPPORTED_INPUT_CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA (alpha is dropped)
PADDING_MODES = ("reflect", "constant")
# ITU-R 601-2 luma in 16-bit fixed point, exactly what PIL's `convert("L")` computes.
LUMA_WEIGHTS_16BIT = np.array([19595, 38470, 7471], dtype=np.int64)


class VQVAEImageProcessorKwargs(ImagesKwargs, total=False):
    """
    num_channels (`int`, *optional*, defaults to 3):
        Channels of `pixel_values`: 1 (grayscale) or 3 (RGB). Inputs are converted: RGB -> gray with
        ITU-R 601-2 luma (as PIL), gray -> RGB by repetition, RGBA/LA drop alpha.
    size_divisor (`int`, *optional*, defaults to 4):
        With `do_pad`, height and width are padded (bottom/right) up to a multiple of this, normally the
        model's downsampling factor.
    padding_mode (`str`, *optional*, defaults to `"reflect"`):
        `"reflect"` mirrors the image into the padding; `"constant"` fills it with 0.0 in `pixel_values`
        space (mid-grey with the default mean/std).
    """

    num_channels: int | None
    size_divisor: int | None
    padding_mode: str | None


class VQVAEImageProcessor(PilBackend):
    r"""
    Turns images into `pixel_values` `[B, C, H, W]` float32 in [-1, 1] (with the defaults) whose height and
    width are multiples of `size_divisor`, and turns model outputs back into images with `postprocess`.

    Pipeline: convert to `num_channels` -> rescale (integer images times `rescale_factor`) -> optional resize
    to `size` -> normalize `(x - image_mean) / image_std` -> pad bottom/right to a multiple of `size_divisor`.

    Inputs: a PIL image, a NumPy array or torch tensor (HW, HWC or CHW; a 4-D array/tensor is a batch), or a
    list of those. The channel axis is inferred as transformers does (an end axis of 1, 3 or 4; channels
    first when both ends qualify); pass `input_data_format` to say it. Integer images are rescaled by
    `rescale_factor`; 16-bit images (`uint16`, PIL's `I;16`/`I` modes) are first scaled to 8 bits, as
    `media_io.load_image` does with files. Floating-point images are taken to be in [0, 1] already and are
    checked, not rescaled again. All images of one call must have the same size unless `size` resizes them.

    Options are keyword arguments of the constructor and of each call (a call overrides, without changing
    the processor); their defaults are the class attributes below, and `num_channels`, `size_divisor` and
    `padding_mode` are documented in `VQVAEImageProcessorKwargs`. `image_mean`/`image_std` are a float or one
    value per channel of what is normalised (`num_channels`); for RGBA inputs a fourth value, transformers'
    one-per-input-channel convention, is accepted and dropped with the alpha channel. With
    `do_convert_rgb=False` (transformers' switch) nothing is converted: the images keep their 1, 3 or 4 channels
    and take one mean/std value per channel.

    Example:

    ```python
    >>> import numpy as np
    >>> from vq_tokenizer.image_processing_vqvae import VQVAEImageProcessor

    >>> processor = VQVAEImageProcessor(num_channels=1, size_divisor=4)
    >>> inputs = processor(np.zeros((27, 29), dtype=np.uint8), return_tensors="pt")
    >>> inputs.pixel_values.shape, inputs.original_sizes
    (torch.Size([1, 1, 28, 32]), [(27, 29)])
    >>> images = processor.postprocess(inputs.pixel_values, original_sizes=inputs.original_sizes)
    >>> images[0].size
    (29, 27)

    ```
    """

    valid_kwargs = VQVAEImageProcessorKwargs
    model_input_names = ["pixel_values"]

    num_channels = 3
    do_resize = False
    size = None  # {"height": h, "width": w}, or an int for a square; needed with do_resize
    resample = PILImageResampling.BICUBIC
    do_rescale = True  # integer images only: float images are checked to lie in [0, 1] instead
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = 0.5
    image_std = 0.5
    do_pad = True
    size_divisor = 4
    padding_mode = "reflect"

    # ------------------------------------------------------------------------------------------ options

    def _standardize_kwargs(self, **kwargs: Any) -> dict:
        kwargs = super()._standardize_kwargs(**kwargs)
        num_channels = kwargs.get("num_channels")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels!r}.")
        size_divisor = kwargs.get("size_divisor")
        if not isinstance(size_divisor, int) or isinstance(size_divisor, bool) or size_divisor < 1:
            raise ValueError(f"size_divisor must be a positive int, got {size_divisor!r}.")
        if kwargs.get("padding_mode") not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {PADDING_MODES}, got {kwargs.get('padding_mode')!r}."
            )
        size = kwargs.get("size")
        if size is not None and not (size.height and size.width):
            raise ValueError(f'size must be {{"height": h, "width": w}} or an int, got {dict(size)}.')
        keep_channels = kwargs.get("do_convert_rgb") is False  # checked per batch in `_preprocess`
        for name in ("image_mean", "image_std"):
            value = kwargs.get(name)
            allowed = SUPPORTED_INPUT_CHANNELS if keep_channels or num_channels == 3 else (1,)
            if isinstance(value, tuple) and len(value) not in allowed:
                raise ValueError(
                    f"{name} must be a float or have one value per output channel (num_channels={num_channels}), "
                    f"got {list(value)}."
                )
        std = kwargs.get("image_std")
        if std is not None and np.any(np.asarray(std) == 0):
            raise ValueError(f"image_std must be non-zero, got {std}.")
        if kwargs.get("do_center_crop"):
            raise ValueError("VQVAEImageProcessor does not center-crop; resize with `size=` instead.")
        if kwargs.get("pad_size") is not None:
            raise ValueError("VQVAEImageProcessor pads to a multiple of `size_divisor`, not to `pad_size`.")
        return kwargs

    # ------------------------------------------------------------------------------------------- inputs

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        """Flatten the input into a list of single images; unlike transformers' helper, 2-D (HW) images
        are images, and file names are refused rather than fetched."""
        items = list(images) if isinstance(images, list | tuple) else [images]
        if not items:
            raise ValueError(
                "No images were given: pass a PIL image, an array/tensor, or a non-empty list of them."
            )
        flat = []
        for item in items:
            if isinstance(item, np.ndarray | torch.Tensor) and item.ndim == 4:
                flat.extend(item[i] for i in range(item.shape[0]))
            else:
                flat.append(item)
        if not flat:
            raise ValueError("No images were given: the batch dimension of the input is 0.")
        return flat

    def _preprocess_image_like_inputs(self, images: Any, *args: Any, **kwargs: Any) -> BatchFeature:
        flat = self._prepare_images_structure(images)
        arrays = [self.process_image(image, index=index, **kwargs) for index, image in enumerate(flat)]
        return self._preprocess(arrays, **kwargs)

    def process_image(
        self,
        image: Any,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        input_data_format: str | ChannelDimension | None = None,
        index: int = 0,
        **kwargs: Any,
    ) -> np.ndarray:
        """One raw image -> channels-first array `[C, H, W]` (C = 1, 3 or 4), checked, in its own dtype."""
        where = f"Image {index}"
        array = self._to_numpy(image, where)
        if do_rescale and rescale_factor * 255 < 0.5 and self._is_wide(image):
            raise ValueError(
                f"{where} is a 16-bit image: it is scaled to 8 bits first (as media_io.load_image does with "
                f"files), so rescale_factor={rescale_factor:.4g} would make it nearly black; keep the default "
                "1/255."
            )
        if isinstance(image, Image.Image) and array.ndim == 3:
            input_data_format = ChannelDimension.LAST  # PIL gives HWC
        if array.dtype == np.bool_:
            array = array.astype(np.float32)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"{where} has dtype {array.dtype}; images must hold integer or float values.")
        if array.ndim not in (2, 3):
            raise ValueError(
                f"{where} has shape {array.shape}; expected HW, HWC or CHW (or a 4-D batch BHWC/BCHW)."
            )
        try:
            channels_first = super().process_image(array, input_data_format=input_data_format)
        except ValueError:  # no end axis of 1, 3 or 4: report the likelier channel count
            channels_first = array if array.shape[0] < array.shape[2] else np.moveaxis(array, 2, 0)
        channels, height, width = channels_first.shape
        if channels not in SUPPORTED_INPUT_CHANNELS:
            raise ValueError(
                f"{where} has {channels} channels (shape {array.shape}); expected 1 (grayscale), 3 (RGB) or "
                "4 (RGBA). If the channel axis was guessed wrong, pass input_data_format='channels_first' or "
                "'channels_last'."
            )
        if height == 0 or width == 0:
            raise ValueError(f"{where} is empty: height {height}, width {width}.")
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ValueError(f"{where} contains NaN or infinite values.")
            if do_rescale and (array.min() < 0 or array.max() > 1):
                raise ValueError(
                    f"{where} is floating point with values in [{array.min():.4g}, {array.max():.4g}]; float "
                    "images must lie in [0, 1] (integer images are rescaled by rescale_factor). Divide by 255, "
                    "pass uint8, or set do_rescale=False."
                )
        elif do_rescale and array.max() * rescale_factor > 1 + 1e-6:
            raise ValueError(
                f"{where} has {array.dtype} values up to {array.max()}, which rescale_factor={rescale_factor:.4g} "
                f"maps above 1; pass rescale_factor=1/{np.iinfo(array.dtype).max} for {array.dtype} images."
            )
        return channels_first

    @staticmethod
    def _is_wide(image: Any) -> bool:
        """Whether `image` holds 16-bit samples, which `_to_numpy` scales to 8 bits."""
        if isinstance(image, Image.Image):
            return image.mode in WIDE_IMAGE_MODES and image.mode != "F"
        if isinstance(image, torch.Tensor):
            return image.dtype == torch.uint16
        return isinstance(image, np.ndarray) and image.dtype.kind == "u" and image.dtype.itemsize == 2

    @staticmethod
    def _to_numpy(image: Any, where: str) -> np.ndarray:
        """PIL image, array or tensor -> NumPy array, 16-bit images scaled to 8 bits (`media_io`'s policy)."""
        if isinstance(image, Image.Image):
            image = standard_mode(image)
            return np.array(image.convert("L") if image.mode == "LA" else image)  # LA: alpha dropped
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            array = (image.float() if image.dtype in (torch.float16, torch.bfloat16) else image).numpy()
        elif isinstance(image, np.ndarray):
            array = image
        else:
            raise ValueError(
                f"{where} has unsupported type {type(image).__name__}; pass a PIL.Image.Image, a numpy.ndarray "
                "or a torch.Tensor (open files with PIL.Image.open(path) or vq_tokenizer.media_io.load_image)."
            )
        return image_to_8bit(array) if VQVAEImageProcessor._is_wide(array) else array

    @staticmethod
    def _convert_channels(array: np.ndarray, num_channels: int) -> np.ndarray:
        """`[C, H, W]` with C in (1, 3, 4) -> `[num_channels, H, W]`, same dtype."""
        if array.shape[0] == 4:
            array = array[:3]
        if array.shape[0] == num_channels:
            return array
        if num_channels == 3:
            return np.repeat(array, 3, axis=0)
        if np.issubdtype(array.dtype, np.integer):
            # Integer fixed point with rounding, exactly as PIL's convert("L").
            luma = np.tensordot(LUMA_WEIGHTS_16BIT, array.astype(np.int64), axes=1)
            return ((luma + 0x8000) >> 16).astype(array.dtype)[None]
        return np.tensordot(LUMA_WEIGHTS_16BIT / 65536, array, axes=1).astype(array.dtype)[None]

    @staticmethod
    def _without_alpha_stat(name: str, value: float | tuple[float, ...], channels: list[int]) -> Any:
        """A fourth `image_mean`/`image_std` value belongs to the alpha channel of RGBA inputs (transformers
        passes one value per input channel) and is dropped with it."""
        if not (isinstance(value, tuple) and len(value) == 4):
            return value
        if set(channels) != {4}:
            raise ValueError(
                f"{name} has 4 values, which fit only RGBA inputs; these images have {sorted(set(channels))} "
                "channels. Give one value per output channel (num_channels=3)."
            )
        return value[:3]

    # ----------------------------------------------------------------------------------------- pipeline

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Resize a `[C, H, W]` float image to `size`, channel by channel in PIL's 32-bit float mode.

        transformers' own `resize` goes through 8-bit PIL images for floats in [0, 1], which would quantise.
        """
        resample = PILImageResampling(resample if resample is not None else self.resample)
        channels = [
            np.asarray(
                Image.fromarray(channel.astype(np.float32)).resize((size.width, size.height), resample)
            )
            for channel in image
        ]
        return np.stack(channels)

    def _preprocess(
        self,
        images: list[np.ndarray],
        num_channels: int,
        do_resize: bool,
        size: SizeDict | None,
        resample: PILImageResampling | int | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        do_pad: bool,
        size_divisor: int,
        padding_mode: str,
        return_tensors: str | TensorType | None,
        **kwargs: Any,
    ) -> BatchFeature:
        channels = [image.shape[0] for image in images]
        keep_channels = kwargs.get("do_convert_rgb") is False
        if keep_channels:
            # transformers' `do_convert_rgb=False`: the images keep their channels, one statistic per channel.
            if len(set(channels)) > 1:
                raise ValueError(
                    f"With do_convert_rgb=False the images keep their channels, and these have {sorted(set(channels))} "
                    "channels; pass images with one channel count, or let the processor convert them."
                )
            for name, value in (("image_mean", image_mean), ("image_std", image_std)):
                if isinstance(value, tuple) and len(value) not in (1, channels[0]):
                    raise ValueError(
                        f"{name} must be a float or have one value per channel ({channels[0]}), got {list(value)}."
                    )
        else:
            image_mean = self._without_alpha_stat("image_mean", image_mean, channels)
            image_std = self._without_alpha_stat("image_std", image_std, channels)
        processed = []
        for image in images:
            if not keep_channels:
                image = self._convert_channels(image, num_channels)
            if do_rescale and np.issubdtype(image.dtype, np.integer):
                image = self.rescale(image, rescale_factor)
            image = image.astype(np.float32)
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image)

        original_sizes = [(int(image.shape[1]), int(image.shape[2])) for image in processed]
        if len(set(original_sizes)) > 1:
            raise ValueError(
                f"The images have different sizes {sorted(set(original_sizes))}; pass size={{'height': h, "
                "'width': w}} (with do_resize=True) to resize them to one size, or process them one by one."
            )
        if do_pad:
            height, width = original_sizes[0]
            target = SizeDict(
                height=-(-height // size_divisor) * size_divisor,
                width=-(-width // size_divisor) * size_divisor,
            )
            processed = self.pad(processed, pad_size=target, fill_value=0.0, padding_mode=padding_mode)

        return BatchFeature(
            data={"pixel_values": np.stack(processed).astype(np.float32), "original_sizes": original_sizes},
            tensor_type=return_tensors,
            skip_tensor_conversion=["original_sizes"],
        )

    # ---------------------------------------------------------------------------------------- outputs

    def postprocess(
        self,
        pixel_values: torch.Tensor | np.ndarray,
        output_type: Literal["pil", "np", "pt"] = "pil",
        original_sizes: Sequence[tuple[int, int]] | torch.Tensor | np.ndarray | None = None,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Model outputs (e.g. a reconstruction) -> images.

        Undoes the normalisation (`x * image_std + image_mean` when `do_normalize`), clamps to [0, 1] and,
        with `original_sizes`, crops the padding away.

        Args:
            pixel_values: `[B, C, H, W]` (or one image `[C, H, W]`) in `pixel_values` space, C = 1 or 3.
            output_type: `"pil"` -> list of B uint8 PIL images (mode "L" or "RGB"); `"np"` -> float32
                array `[B, H, W, C]` in [0, 1]; `"pt"` -> float32 tensor `[B, C, H, W]` in [0, 1] (detached,
                on the input's device).
            original_sizes: `(height, width)` per image, as returned by the processor, to crop to.

        Returns:
            See `output_type`.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f'output_type must be "pil", "np" or "pt", got {output_type!r}.')
        if not isinstance(pixel_values, torch.Tensor | np.ndarray):
            raise ValueError(
                f"pixel_values must be a torch.Tensor or numpy.ndarray, got {type(pixel_values).__name__}."
            )
        images = torch.as_tensor(pixel_values).detach().float()
        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"pixel_values must have shape [B, C, H, W] with C = 1 or 3, got {tuple(pixel_values.shape)}."
            )

        if self.do_normalize:
            stats = [
                np.asarray(value, dtype=np.float32).reshape(-1) for value in (self.image_mean, self.image_std)
            ]
            mean, std = (
                torch.as_tensor(s[: images.shape[1]], device=images.device).reshape(-1, 1, 1) for s in stats
            )
            images = images * std + mean
        images = images.clamp(0.0, 1.0)

        if original_sizes is not None:
            sizes = [tuple(int(v) for v in size) for size in np.asarray(original_sizes).reshape(-1, 2)]
            if len(sizes) != images.shape[0]:
                raise ValueError(
                    f"original_sizes has {len(sizes)} entries for a batch of {images.shape[0]} images."
                )
            if any(h > images.shape[2] or w > images.shape[3] or h < 1 or w < 1 for h, w in sizes):
                raise ValueError(
                    f"original_sizes {sizes} do not fit in images of size {tuple(images.shape[2:])}."
                )
            if output_type == "pil":
                crops = [image[:, :h, :w] for image, (h, w) in zip(images, sizes, strict=True)]
                return [self._to_pil(crop) for crop in crops]
            if len(set(sizes)) > 1:
                raise ValueError(
                    f"original_sizes differ across the batch ({sorted(set(sizes))}); use output_type='pil' or "
                    "postprocess one image at a time."
                )
            height, width = sizes[0]
            images = images[:, :, :height, :width]

        if output_type == "pt":
            return images
        if output_type == "np":
            return images.permute(0, 2, 3, 1).cpu().numpy()
        return [self._to_pil(image) for image in images]

    @staticmethod
    def _to_pil(image: torch.Tensor) -> Image.Image:
        """`[C, H, W]` float in [0, 1] -> uint8 PIL image."""
        array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
