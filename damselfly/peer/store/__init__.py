"""Node-local storage.

The piece store (every digest check lives here: writer.py on the way in,
piecestore.verify_piece on the way out), piece layout, whole-object hashing, eviction.
"""
