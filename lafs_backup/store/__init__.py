"""The grid-side format and the store: entries, snapshot edges, encodings, packs, and the one way objects reach the grid."""
