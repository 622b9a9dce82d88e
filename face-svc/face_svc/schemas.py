from __future__ import annotations

from pydantic import BaseModel, Field


class Timings(BaseModel):
    decode_ms: float = Field(description="Time to read and decode the image(s).")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class FaceOut(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the uploaded (upright) image.")
    score: float = Field(description="Detector score (dlib with a given box nothing matched: 0).")
    landmarks: list[list[float]] = Field(
        description="Five [x, y] points: left eye, right eye, nose tip, left and right mouth corner, as seen.")
    embedding: list[float] | None = Field(None, description="L2-normalised embedding (with embed=true).")
    crop: str | None = Field(None, description="Aligned face crop as base64 PNG (with crops=true): what /v1/faces/embed takes.")


class DetectResponse(BaseModel):
    object: str = "face.detection"
    model: str
    faces: list[FaceOut] = Field(description="Largest first; [] when the image has no face.")
    found: int = Field(description="Faces the detector found, before the max_faces cut.")
    truncated: bool = Field(description="Whether faces were left out by max_faces.")
    width: int = Field(description="Width of the uploaded image, upright (EXIF orientation applied).")
    height: int
    recognition_batch: int = Field(
        description="Faces in the recognition forward pass that embedded this image's faces (0: none embedded).")
    timings: Timings


class Embedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float]


class EmbedResponse(BaseModel):
    object: str = "list"
    model: str
    data: list[Embedding]
    dim: int
    recognition_batch: int = Field(description="Crops in the recognition forward pass that embedded these crops.")
    timings: Timings


class VerifyFace(BaseModel):
    box: list[float]
    score: float
    landmarks: list[list[float]]


class VerifyResponse(BaseModel):
    object: str = "face.verification"
    model: str
    similarity: float = Field(description="Cosine similarity of the two faces' embeddings, -1 to 1.")
    threshold: float = Field(description="The model's threshold (catalog option verify_threshold).")
    verdict: str = Field(description='"same" when similarity >= threshold, else "different".')
    face_a: VerifyFace
    face_b: VerifyFace
    timings: Timings
