"""Face backends: one module per model format, each with one ``modelhost.backend.Backend``.

The HTTP process imports this module to validate the catalog, so it names the classes by import path and
imports nothing heavy; the worker process imports the one it needs.
"""

BACKENDS: dict[str, str] = {
    "insightface": "face_svc.backends.insightface:InsightFaceAnalyzer",
    "dlib": "face_svc.backends.dlib_resnet:DlibFaceAnalyzer",
    "yunet_sface": "face_svc.backends.yunet_sface:YuNetSFaceAnalyzer",
}
