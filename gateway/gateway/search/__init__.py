"""Photo search: the vectors of embed jobs (``store``: SQLite, float16 blobs), ranked by brute-force cosine
in memory (``matrix``), kept in step with the jobs database and answered to ``POST /v1/search``
(``service.Search``)."""
