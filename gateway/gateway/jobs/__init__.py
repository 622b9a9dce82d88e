"""Bulk jobs: one task (caption, faces, transcribe) over many files, durably, in the bulk lane.

    store.py     SQLite (WAL) schema, migrations and the transactions that make a job survive kill -9
    inputs.py    library roots (paths, folders, globs; 403 outside), uploads as content-addressed blobs
    runner.py    the scheduler, the item workers, the interactive gate; its docstring states the invariants
    tasks/       one adapter per task: how an item becomes a result through its family service
    media.py     videos: keyframes at scene changes, the audio track in pieces (PyAV)
    cluster.py   faces into people (average linkage over cosine similarity; pure)
    service.py   what the API routes call (gateway/routers/jobs.py); the status view
"""
