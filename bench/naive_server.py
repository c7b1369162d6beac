"""The naive design the benchmark compares against: per-request `session.run` in the threadpool.

This is how a FastAPI image classifier is usually first written: a plain `def` route (FastAPI
runs it in its threadpool, up to 40 at once), `UploadFile` (Starlette parses the form and spools
big files to disk), Pillow decode at full size, the same resize/crop/normalize math as the
service, and one shared ONNX Runtime session with `intra_op_num_threads=NUM_THREADS` and default
options otherwise (so its worker threads spin). Every request runs the model on its own.

    NAIVE_MODEL_PATH=resources/resnet50.onnx NUM_THREADS=2 \
        uvicorn --factory bench.naive_server:create_app --port 8001
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Annotated

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError

INPUT_SIZE = 224
RESIZE_SHORTER = 256
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def preprocess(data: bytes) -> npt.NDArray[np.float32]:
    """Resize(256), CenterCrop(224), ImageNet normalization, the textbook way: [1, 3, 224, 224]."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    if width <= height:
        size = (RESIZE_SHORTER, int(RESIZE_SHORTER * height / width))
    else:
        size = (int(RESIZE_SHORTER * width / height), RESIZE_SHORTER)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - INPUT_SIZE) / 2.0)
    top = round((size[1] - INPUT_SIZE) / 2.0)
    image = image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((pixels - MEAN) / STD)[np.newaxis].astype(np.float32)


def create_app(
    model_path: Path | None = None, labels_path: Path | None = None, threads: int | None = None
) -> FastAPI:
    """The naive app; arguments default to NAIVE_MODEL_PATH, LABELS_PATH and NUM_THREADS."""
    model = model_path or Path(os.environ.get("NAIVE_MODEL_PATH", "resources/resnet50.onnx"))
    labels_file = labels_path or Path(
        os.environ.get("LABELS_PATH", "resources/imagenet_classes.txt")
    )
    intra_threads = threads or int(os.environ.get("NUM_THREADS") or os.cpu_count() or 1)

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]

    app = FastAPI(title="naive classifier")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/infer")
    def infer(image: Annotated[UploadFile, File()]) -> dict[str, object]:
        try:
            tensor = preprocess(image.file.read())
        except (UnidentifiedImageError, OSError) as exc:
            raise HTTPException(400, f"cannot decode the image: {exc}") from exc
        (logits,) = session.run(None, {input_name: tensor})
        scores = np.asarray(logits, dtype=np.float32)[0]
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:3]
        return {
            "predictions": [
                {"label": labels[i], "confidence": float(probabilities[i])} for i in best
            ]
        }

    return app
