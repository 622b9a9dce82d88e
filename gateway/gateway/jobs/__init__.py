"""Bulk jobs: one task (caption, faces, transcribe, embed) over many files, durably, in the bulk lane.

    service.py   the facade the API routes call (gateway/routers/jobs.py): submit, add inputs, cancel, views
    schemas.py   request and response bodies; the OpenAPI request bodies generated from them
    export.py    the streamed answers: results as JSON lines or CSV, progress as server-sent events
    store.py     SQLite (WAL) schema, migrations and the transactions that make a job survive kill -9
    inputs.py    library roots (paths, folders, globs; 403 outside), uploads as content-addressed blobs
    runner.py    scheduling: which jobs run, how each starts, ends and is cancelled
    items.py     one item from its file to its one recorded outcome (attempts, errors)
    reading.py   reading and hashing an item's file, checked against the library again
    dedup.py     the same content inferred once: stored results and shared in-flight work
    pacing.py    concurrency, the yield to interactive traffic, the pause and back-off; errors judged by class
    events.py    change events for watchers (SSE) and a running job's rate
    tasks/       one adapter per task: how an item becomes a result through its family service
    media.py     videos: keyframes at scene changes, the audio track in pieces (PyAV)
    cluster.py   faces into people (average linkage over cosine similarity; pure)

Each module's docstring states its invariants.
"""
