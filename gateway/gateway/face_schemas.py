"""Response schemas of the face routes (/v1/faces/...): what face-svc answers, documented for OpenAPI."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FaceTimings(BaseModel):
    decode_ms: float = Field(description="Time the face service took to read and decode the image(s).")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class Face(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the uploaded image, upright (EXIF applied).")
    score: float = Field(description="Detector score.")
    landmarks: list[list[float]] = Field(
        description="Five [x, y] points: left eye, right eye, nose tip, left and right mouth corner, as seen.")
    embedding: list[float] | None = Field(None, description="L2-normalised embedding (with embed=true).")
    crop: str | None = Field(None, description="Aligned face crop, base64 PNG (with crops=true): what /v1/faces/embed takes.")


class FaceDetection(BaseModel):
    object: str = "face.detection"
    model: str
    faces: list[Face] = Field(description="Largest first; [] when the image has no face.")
    found: int = Field(description="Faces the detector found, before the max_faces cut.")
    truncated: bool = Field(description="Whether faces were left out by max_faces.")
    width: int
    height: int
    recognition_batch: int = Field(description="Faces in the recognition pass that embedded this image's faces (0: none).")
    timings: FaceTimings


class FaceEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float]


class FaceEmbeddings(BaseModel):
    object: str = "list"
    model: str
    data: list[FaceEmbedding]
    dim: int
    recognition_batch: int
    timings: FaceTimings


class VerifiedFace(BaseModel):
    box: list[float]
    score: float
    landmarks: list[list[float]]


class FaceVerification(BaseModel):
    object: str = "face.verification"
    model: str
    similarity: float = Field(description="Cosine similarity of the two faces' embeddings, -1 to 1.")
    threshold: float = Field(description="The model's threshold, from the catalog (options.verify_threshold).")
    verdict: str = Field(description='"same" when similarity >= threshold, else "different".')
    face_a: VerifiedFace
    face_b: VerifiedFace
    timings: FaceTimings
