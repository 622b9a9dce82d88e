"""Face backends: one module per model format, each with one ``modelhost.backend.Backend``.

The HTTP process imports this module to validate the catalog, so it names the classes by import path and
imports nothing heavy; the worker process imports the one it needs.
"""

BACKENDS: dict[str, str] = {
    "insightface": "face_svc.backends.insightface:InsightFaceAnalyzer",
    "dlib": "face_svc.backends.dlib_resnet:DlibFaceAnalyzer",
}

# Cosine similarity at or above which verify says "same", when a catalog entry sets no
# ``verify_threshold`` option. Embeddings differ per model: set it per model in the catalog.
DEFAULT_VERIFY_THRESHOLDS: dict[str, float] = {
    # ArcFace-style recognisers (w600k_r50 in buffalo_l): 0.4 is a common operating point; tune it on your photos.
    "insightface": 0.4,
    # dlib's ResNet: its documented "same" rule is Euclidean distance < 0.6 between raw descriptors; their
    # norms are about 1.45 (measured), which makes that a cosine similarity of about 0.92.
    "dlib": 0.92,
}
