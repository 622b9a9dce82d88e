"""embed-svc: image-text embeddings (CLIP, SigLIP) for search."""
