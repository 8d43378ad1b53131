"""Getting an object into the store: the cache of running downloads, piece sources (origin, parents), the scheduler session."""
