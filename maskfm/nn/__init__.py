"""Building blocks shared by methods: positional embeddings, losses, decoders."""
