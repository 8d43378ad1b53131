"""Node-local storage: the piece store (every digest check lives here), piece layout, whole-object hashing, eviction."""
