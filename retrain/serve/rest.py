"""TF Serving's REST predict format: request bodies -> encoded images; outputs -> the answer.

Accepted, as TF Serving accepts them for a signature with one string input `image_bytes`:
  row form      {"instances": [{"b64": "..."}, ...]}  or  [{"image_bytes": {"b64": "..."}}, ...]
                -> {"predictions": [{"probabilities": [...], "classes": [...], "scores": [...]}, ...]}
  columnar form {"inputs": {"image_bytes": [{"b64": "..."}, ...]}}  or  {"inputs": [{"b64": ...}]}
                -> {"outputs": {"probabilities": [[...]], "classes": [[...]], "scores": [[...]]}}
Base64 is the standard alphabet (`+`, `/`), as TF Serving decodes it. Each image is checked
here (JPEG, PNG, GIF or BMP, as the signature decodes), and a JPEG's EXIF orientation is
applied, as `retrain predict` and training apply it: the SavedModel graph cannot read EXIF.
No TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from retrain.errors import ConfigError

SIGNATURE = "serving_default"
FORMATS = ("JPEG", "PNG", "GIF", "BMP")  # what tf.io.decode_image decodes
_FORM = 'send {"instances": [{"b64": "<base64 of a JPEG or PNG>"}]}'


@dataclass(frozen=True)
class PredictRequest:
    images: list[bytes]
    columnar: bool


def parse(body: bytes) -> PredictRequest:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ConfigError("the request body is not JSON", f"{len(body)} bytes", _FORM) from None
    if not isinstance(request, dict):
        raise ConfigError("the request body is not a JSON object", type(request).__name__, _FORM)
    signature = request.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise ConfigError("retrain serve answers the serving_default signature (encoded images)",
                          f"signature_name {signature!r}", "drop signature_name or pass serving_default")
    if ("instances" in request) == ("inputs" in request):
        raise ConfigError("a predict request has `instances` (row form) or `inputs` (columnar form), "
                          "exactly one", ", ".join(sorted(request)) or "neither", _FORM)
    if "instances" in request:
        items = request["instances"]
        if not isinstance(items, list):
            raise ConfigError("`instances` must be a list", type(items).__name__, _FORM)
        items = [item["image_bytes"] if isinstance(item, dict) and set(item) == {"image_bytes"} else item
                 for item in items]
    else:
        items = request["inputs"]
        if isinstance(items, dict) and set(items) == {"image_bytes"}:
            items = items["image_bytes"]
        if isinstance(items, dict):  # one image, not a list
            items = [items]
        if not isinstance(items, list):
            raise ConfigError("`inputs` must be {\"image_bytes\": [...]} or a list", type(items).__name__, _FORM)
    if not items:
        raise ConfigError("the request holds no image", "an empty list", _FORM)
    return PredictRequest([upright(_b64(item, i), i) for i, item in enumerate(items)], "inputs" in request)


def _b64(item, index: int) -> bytes:
    if not (isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str)):
        raise ConfigError(f"image {index} is not a {{\"b64\": \"...\"}} object", json.dumps(item)[:60], _FORM)
    try:
        return base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"image {index} is not standard base64", item["b64"][:20] + "...",
                          "encode with the standard alphabet (+ and /, padded with =), not the URL-safe one") from None


def upright(data: bytes, index: int) -> bytes:
    """The encoded image if the signature can decode it as it is; a JPEG whose EXIF turns it is
    turned here and sent as PNG (lossless)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format
                orientation = image.getexif().get(0x0112, 1) if kind == "JPEG" else 1
                if kind in FORMATS and orientation not in (0, 1):
                    out = io.BytesIO()
                    ImageOps.exif_transpose(image).save(out, "PNG")
                    return out.getvalue()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(f"image {index} has too many pixels", f"{len(data)} bytes",
                          "send a smaller image") from None
    except (OSError, SyntaxError, ValueError, EOFError):  # Pillow's ways of saying "not an image"
        kind = None
    if kind not in FORMATS:
        raise ConfigError(f"image {index} is not a JPEG, PNG, GIF or BMP", kind or f"{len(data)} bytes of something else",
                          "send the image file's bytes, base64-encoded")
    return data


def answer(outputs: dict[str, np.ndarray], columnar: bool) -> dict:
    """The signature's outputs for a request's images -> TF Serving's response body."""
    plain = {k: [[x.decode() if isinstance(x, bytes) else x for x in row] for row in v.tolist()]
             for k, v in outputs.items()}
    if columnar:
        return {"outputs": plain}
    count = len(next(iter(plain.values())))
    return {"predictions": [{k: v[i] for k, v in plain.items()} for i in range(count)]}
