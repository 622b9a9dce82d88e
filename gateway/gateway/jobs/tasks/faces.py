"""faces: every face of every image and video keyframe, with its embedding (face-svc's POST
/v1/faces/detect with embed=true); at the end, optionally, the faces grouped into people
(``cluster.cluster_faces``: average linkage over cosine similarity, threshold from the model)."""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np

from modelhost.catalog import ModelSpec
from modelhost.client import ModelHostClient
from modelhost.errors import BadRequest

from ..cluster import cluster_faces
from ..kinds import TASK_KINDS
from .base import Context, ImageTask

# The similarity at which face-svc's verify says "same person", per backend (face-svc's
# DEFAULT_VERIFY_THRESHOLDS); a catalog option cluster_threshold or verify_threshold wins.
DEFAULT_THRESHOLDS = {"insightface": 0.4, "dlib": 0.92}


def default_threshold(spec: ModelSpec) -> float:
    opts = spec.options or {}
    for k in ("cluster_threshold", "verify_threshold"):
        if k in opts:
            return float(opts[k])
    return DEFAULT_THRESHOLDS.get(spec.backend, 0.5)


class FacesTask(ImageTask):
    name = "faces"
    family = "face"
    kinds = TASK_KINDS["faces"]
    csv_columns = ("t_s", "face", "person", "score", "box")

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        cluster = raw.get("cluster", True)
        if isinstance(cluster, str):
            cluster = cluster.strip().lower() not in ("0", "false", "no", "off", "")
        threshold = raw.get("cluster_threshold")
        if threshold in (None, ""):
            threshold = default_threshold(spec)
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise BadRequest("cluster_threshold must be a number", param="cluster_threshold")
        if not -1.0 <= threshold <= 1.0:
            raise BadRequest("cluster_threshold is a cosine similarity, between -1 and 1", param="cluster_threshold")
        out: dict[str, Any] = {"cluster": bool(cluster), "cluster_threshold": threshold}
        mf = raw.get("max_faces")
        if mf not in (None, ""):
            try:
                mf = int(mf)
            except (TypeError, ValueError):
                raise BadRequest("max_faces must be an integer", param="max_faces")
            if not 1 <= mf <= 1000:
                raise BadRequest("max_faces must be between 1 and 1000", param="max_faces")
            out["max_faces"] = mf
        return out

    def key_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k == "max_faces"}

    async def image(self, ctx: Context, data: bytes) -> dict[str, Any]:
        async def call(client: ModelHostClient) -> Any:
            form = aiohttp.FormData()
            form.add_field("file", data, filename="image", content_type="application/octet-stream")
            form.add_field("model", self.model)
            form.add_field("embed", "true")
            if "max_faces" in self.params:
                form.add_field("max_faces", str(self.params["max_faces"]))
            return await client.request("POST", "/v1/faces/detect", data=form, timeout_s=ctx.request_timeout_s)

        body = await ctx.infer(call)
        faces = [{"box": f["box"], "score": f["score"], "landmarks": f.get("landmarks"),
                  "embedding": [round(x, 6) for x in f.get("embedding") or []]} for f in body["faces"]]
        return {"faces": faces, "found": body.get("found", len(faces)), "width": body.get("width"), "height": body.get("height")}

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
