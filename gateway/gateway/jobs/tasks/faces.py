"""faces: every face of every image and video keyframe, with its embedding (the face family's detect with
embed=true, ``modelhost.families.face``); at the end, optionally, the faces grouped into people
(``cluster.cluster_faces``: average linkage over cosine similarity, threshold from the model)."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelhost.catalog import ModelSpec
from modelhost.families import validated
from modelhost.families.face import FAMILY, DetectOptions, detect, verify_threshold

from ..cluster import cluster_faces
from ..kinds import TASK_KINDS
from .base import Context, ImageTask


def default_threshold(spec: ModelSpec) -> float:
    """The model's ``cluster_threshold`` option, else the similarity at which its verify says "same"."""
    opts = spec.options or {}
    if "cluster_threshold" in opts:
        return float(opts["cluster_threshold"])
    return verify_threshold(spec.backend, opts)


class FacesTask(ImageTask):
    name = "faces"
    family = FAMILY
    kinds = TASK_KINDS["faces"]
    csv_columns = ("t_s", "face", "person", "score", "box")

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        """``raw`` is a job's checked options (``jobs.schemas.JobOptions``: ``cluster`` a bool,
        ``cluster_threshold`` a similarity in -1..1); what is left is the defaults and the face family's rule."""
        threshold = raw.get("cluster_threshold")
        out: dict[str, Any] = {"cluster": raw.get("cluster", True),
                               "cluster_threshold": default_threshold(spec) if threshold is None else float(threshold)}
        options = validated(DetectOptions, {"max_faces": raw.get("max_faces")})
        if options.max_faces is not None:
            out["max_faces"] = options.max_faces
        return out

    def key_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k == "max_faces"}

    async def image(self, ctx: Context, data: bytes) -> dict[str, Any]:
        options = DetectOptions(embed=True, max_faces=self.params.get("max_faces"))
        reply = await ctx.infer(lambda upstream: detect(upstream, self.model, data, options,
                                                        timeout_s=ctx.request_timeout_s))
        faces = [{"box": f.box, "score": f.score, "landmarks": f.landmarks,
                  "embedding": [round(x, 6) for x in f.embedding or []]} for f in reply.faces]
        return {"faces": faces, "found": reply.found, "width": reply.width, "height": reply.height}

    def wants_results_at_finish(self) -> bool:
        return bool(self.params.get("cluster"))

    def finish(self, results: list[tuple[int, Any]]) -> tuple[dict[str, Any] | None, list[tuple[int, str, int]]]:
        refs: list[tuple[int, str]] = []
        vectors: list[list[float]] = []
        for seq, result in results:
            for face_id, face in _faces(result):
                if face.get("embedding"):
                    refs.append((seq, face_id))
                    vectors.append(face["embedding"])
        threshold = float(self.params["cluster_threshold"])
        labels = cluster_faces(np.asarray(vectors, dtype=np.float32), threshold) if vectors else []
        people = [(seq, face_id, label) for (seq, face_id), label in zip(refs, labels)]
        summary = {"faces": len(vectors), "people": len(set(labels)), "cluster_threshold": threshold,
                   "algorithm": "average-linkage agglomerative clustering over cosine similarity"}
        return summary, people

    def public(self, result: dict[str, Any], people: dict[str, int], *, embeddings: bool) -> dict[str, Any]:
        def face_out(face_id: str, face: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in face.items() if embeddings or k != "embedding"}
            if face_id in people:
                out["person"] = people[face_id]
            return out

        if "keyframes" in result:
            frames = []
            for k, frame in enumerate(result["keyframes"]):
                frames.append({**frame, "faces": [face_out(f"{k}.{i}", f) for i, f in enumerate(frame["faces"])]})
            return {**result, "keyframes": frames}
        return {**result, "faces": [face_out(str(i), f) for i, f in enumerate(result["faces"])]}

    def csv_rows(self, result: dict[str, Any], people: dict[str, int]) -> list[dict[str, Any]]:
        rows = []
        frames = result["keyframes"] if "keyframes" in result else [{"faces": result["faces"]}]
        for k, frame in enumerate(frames):
            for i, f in enumerate(frame["faces"]):
                face_id = f"{k}.{i}" if "keyframes" in result else str(i)
                rows.append({"t_s": frame.get("t_s", ""), "face": face_id, "person": people.get(face_id, ""),
                             "score": f["score"], "box": " ".join(str(v) for v in f["box"])})
        return rows or [{}]


def _faces(result: dict[str, Any]):  # noqa: ANN202 - a generator of (face id, face)
    if "keyframes" in result:
        for k, frame in enumerate(result["keyframes"]):
            for i, face in enumerate(frame.get("faces", [])):
                yield f"{k}.{i}", face
    else:
        for i, face in enumerate(result.get("faces", [])):
            yield str(i), face
