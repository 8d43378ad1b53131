"""Getting an object into the store.

The cache of running downloads (cache.py), a download's observable state
(download.py), the fetch that fills it (fetch.py), piece sources (sources.py:
origin, parents), the parents' transport and swarm, the scheduler session.
"""
