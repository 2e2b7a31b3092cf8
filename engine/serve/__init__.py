"""`emoengine serve`: EmoNet behind HTTP on Ray Serve (gateway, replicas with dynamic batching, video jobs)."""
