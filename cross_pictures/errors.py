"""Domain errors. No HTTP here: `api/errors.py` maps each class to a status code."""


class CrossPicturesError(Exception):
    """Base class for every error this service raises on purpose."""


class InvalidImage(CrossPicturesError):
    """The upload is empty, corrupt or truncated (HTTP 400)."""


class UploadTooLarge(CrossPicturesError):
    """The upload has more bytes than MAX_UPLOAD_BYTES (HTTP 413)."""


class UploadTimeout(CrossPicturesError):
    """The request body did not arrive within UPLOAD_TIMEOUT_S (HTTP 408)."""


class ImageTooLarge(CrossPicturesError):
    """The image declares more pixels than MAX_IMAGE_PIXELS (HTTP 413)."""


class UnsupportedFormat(CrossPicturesError):
    """The upload is not an image, or an image format we cannot decode (HTTP 415)."""


class ModelNotReady(CrossPicturesError):
    """The model is not loaded yet, or the service is shutting down (HTTP 503)."""


class Overloaded(CrossPicturesError):
    """The queue in front of the model is full (HTTP 503 with Retry-After)."""


class DeadlineExceeded(CrossPicturesError):
    """A request waited longer than REQUEST_TIMEOUT_S before reaching the model (HTTP 504)."""


class ModelLoadError(CrossPicturesError):
    """The model or labels cannot be used; the message says how to fix it."""
